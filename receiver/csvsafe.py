"""CSV that is safe to open in a spreadsheet: the one rule, for every CSV the product writes.

A cell that begins with `=`, `+`, `-`, `@`, a tab or a carriage return is read by Excel,
LibreOffice and Google Sheets as a formula (`=HYPERLINK(...)` posted as a message_uuid would
run on a finance laptop). OWASP's rule (CSV Injection): prefix such a cell with a single quote,
which spreadsheets show as text. A plain number (`-0.01`, `+44...`) is left as it is: it is
data a spreadsheet reads as a number, not a formula, and a refund must stay summable.
`receiver export` writes through ``neutralise``; Datasette's CSV goes through
``SafeCsvStream`` (config/plugins/receiver_csv.py).
"""

import codecs
import csv
import io
import re

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?\Z")


def neutralise(value):
    """A cell as it is safe to write: a text that a spreadsheet would take for a formula gets
    a leading single quote; numbers, plain text and non-text values are unchanged."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS) and not NUMBER.match(value):
        return "'" + value
    return value


def neutralise_row(values):
    return [neutralise(value) for value in values]


# Where a cell may begin with a formula character: after a delimiter or line end, possibly
# inside quotes, unless the cell is a plain number (and at the start of a chunk, checked
# apart). Chunks without one pass through untouched; the rest are parsed and rewritten.
RISKY = re.compile(r'[,\n]"?(?![+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"?(?:[,\r\n]|\Z))'
                   r'[=+\-@\t\r]')


class SafeCsvStream:
    """Rewrites a CSV byte stream (RFC 4180, as Python's csv module writes it) so that every
    cell is ``neutralise``d, record by record as records complete: constant memory."""

    def __init__(self, lineterminator="\r\n"):
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="surrogateescape")
        self.pending = ""
        self.lineterminator = lineterminator

    def feed(self, data, final=False):
        """Bytes in -> the bytes of the complete records so far, neutralised."""
        text = self.pending + self.decoder.decode(data, final)
        if final:
            complete, self.pending = text, ""
        else:
            cut = self._last_record_end(text)
            complete, self.pending = text[:cut], text[cut:]
        if not complete or not (complete.lstrip('"').startswith(FORMULA_STARTS)
                                or RISKY.search(complete)):
            return complete.encode("utf-8", "surrogateescape")
        out = io.StringIO()
        writer = csv.writer(out, lineterminator=self.lineterminator)
        for row in csv.reader(io.StringIO(complete, newline="")):
            writer.writerow(neutralise_row(row))
        return out.getvalue().encode("utf-8", "surrogateescape")

    @staticmethod
    def _last_record_end(text):
        """The index just past the last line end outside quotes (0 if none): a line end is
        outside quotes when an even number of quotes comes before it (``text`` starts at a
        record's start)."""
        end = text.rfind("\n")
        while end >= 0 and text.count('"', 0, end) % 2:
            end = text.rfind("\n", 0, end)
        return end + 1
