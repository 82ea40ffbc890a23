"""SQL views over the event store: the one definition of billing, and the reports built on it.

Recreated by ``receiver init-db`` so that their definitions follow the receiver's version.
Amounts are summed as integer billionths (``*_nano``) and shown as exact decimal text, and
never across currencies: every total is per currency (a message without a price has none).
``receiver export``, the canned queries and the dashboard read these views.
Views (unlike canned queries) stream every row from Datasette with ``.csv?_stream=on``.
"""

import re

from . import money
from .schemas import REACHED_RANKS, REACHED_STATUSES


def reached(prefix=""):
    """SQL over a ``messages`` row (columns prefixed ``prefix``, e.g. "m."): true when the
    message reached the person, i.e. a delivered or read status was seen for it, by a status
    callback or a final report's entry, whatever came after it (a later undeliverable or
    rejected does not undo a delivery). The one definition used by the ``dispatches`` and
    ``workflows`` refreshes of both APIs (store.py) and by the views."""
    ranks = ", ".join(str(rank) for rank in REACHED_RANKS)
    quoted = ", ".join(f"'{status}'" for status in REACHED_STATUSES)
    return (f"({prefix}status_rank IN ({ranks}) OR {prefix}delivered_at IS NOT NULL"
            f" OR {prefix}read_at IS NOT NULL OR {prefix}final_report_status IN ({quoted}))")


def reached_at(prefix=""):
    """SQL: when a message reached the person (NULL when only a final report says so)."""
    return f"coalesce({prefix}delivered_at, {prefix}read_at)"


def signed_format(expression):
    """Exact decimal text of a possibly negative nano-amount."""
    return (
        f"CASE WHEN ({expression}) < 0 THEN '-' || {money.sql_format(f'-({expression})')} "
        f"ELSE {money.sql_format(expression)} END"
    )


# SMS and MMS are charged when submitted; WhatsApp, Viber and Messenger when delivered
# (Vonage's Messages status-callback concept page). A delivered message whose submitted
# callback never came is still charged, at the earliest later status.
def charged_at(prefix=""):
    """SQL: when a ``messages`` row (columns prefixed ``prefix``) was charged; NULL: not charged."""
    return f"""CASE
    WHEN {prefix}channel IN ('sms', 'mms') THEN coalesce({prefix}submitted_at, {prefix}delivered_at, {prefix}read_at)
    ELSE coalesce({prefix}delivered_at, {prefix}read_at)
END"""


CHARGED_AT = charged_at()

CHARGED_STATUS = """CASE
    WHEN channel IN ('sms', 'mms') THEN
        CASE WHEN submitted_at IS NOT NULL THEN 'submitted'
             WHEN delivered_at IS NOT NULL THEN 'delivered' ELSE 'read' END
    ELSE CASE WHEN delivered_at IS NOT NULL THEN 'delivered' ELSE 'read' END
END"""


def _billing_per(period, expression):
    """SQL: billing_lines totalled per ``period`` (``expression`` of charged_at), API, channel
    and currency; charged messages without a price are counted (unpriced_messages)."""
    return f"""
SELECT
    {expression} AS {period},
    api,
    channel,
    currency,
    count(*) AS messages,
    count(price_nano) AS priced_messages,
    count(*) - count(price_nano) AS unpriced_messages,
    {money.sql_format('sum(price_nano)')} AS total,
    sum(price_nano) AS total_nano
FROM billing_lines
GROUP BY {period}, api, channel, currency
"""


# SQL: the messages row ``m`` is a leg of the workflows row ``w`` (a Dispatch leg by its
# dispatch_uuid, a Messages leg by its workflow_id).
LEG_OF_W = ("(m.dispatch_uuid = w.workflow_id"
            " OR (m.dispatch_uuid IS NULL AND m.workflow_id = w.workflow_id))")


def hours_since(expression):
    """SQL: hours from the time ``expression`` to now (UTC), one decimal."""
    return f"round((julianday('now') - julianday({expression})) * 24, 1)"


VIEWS = {
    # One row per charged message: the definition of billing.
    "billing_lines": f"""
SELECT
    api,
    coalesce(dispatch_uuid, workflow_id) AS workflow_id,
    dispatch_uuid,
    message_uuid,
    channel,
    {CHARGED_STATUS} AS charged_status,
    {CHARGED_AT} AS charged_at,
    price,
    price_nano,
    currency,
    price_source
FROM messages
WHERE {CHARGED_AT} IS NOT NULL
""",
    # Per charge day (UTC), API, channel and currency. Charged messages without a price have
    # no currency: their row (currency empty) counts them in unpriced_messages.
    "billing_by_day": _billing_per("day", "date(charged_at)"),
    # Per charge month (UTC, YYYY-MM), API, channel and currency: a month's totals.
    "billing_by_month": _billing_per("month", "strftime('%Y-%m', charged_at)"),
    # Per workflow of either API (a Dispatch dispatch, a Messages failover request; a message
    # outside any workflow on its own line) and currency, compared with the final report's
    # total where Vonage sends one in the same currency. first_charged_at is the workflow's
    # first charge in any currency, so a period filter on it keeps its lines together.
    "billing_by_workflow": f"""
WITH lines AS (
    SELECT *, CASE WHEN workflow_id IS NULL THEN message_uuid END AS single_message
    FROM billing_lines
),
totals AS (
    SELECT
        api,
        workflow_id,
        single_message AS message_uuid,
        currency,
        min(min(charged_at)) OVER workflow AS first_charged_at,
        count(*) AS messages,
        count(price_nano) AS priced_messages,
        count(*) - count(price_nano) AS unpriced_messages,
        group_concat(DISTINCT channel) AS channels,
        sum(price_nano) AS total_nano,
        count(currency) OVER workflow AS currencies
    FROM lines
    GROUP BY api, workflow_id, single_message, currency
    WINDOW workflow AS (PARTITION BY api, workflow_id, single_message)
)
SELECT
    b.api,
    b.workflow_id,
    b.message_uuid,
    b.first_charged_at,
    b.messages,
    b.priced_messages,
    b.unpriced_messages,
    b.channels,
    b.currency,
    {money.sql_format('b.total_nano')} AS total,
    b.total_nano,
    d.final_price AS final_report_total,
    d.final_currency AS final_report_currency,
    CASE WHEN d.final_currency = b.currency
         THEN {signed_format('d.final_price_nano - b.total_nano')} END AS difference,
    CASE WHEN d.final_currency = b.currency
         THEN d.final_price_nano - b.total_nano END AS difference_nano,
    CASE
        WHEN b.api <> 'dispatch' THEN 'Messages API: Vonage sends no total to compare with'
        WHEN b.workflow_id IS NULL THEN 'no dispatch'
        WHEN d.final_status IS NULL THEN 'final report missing'
        WHEN b.currency IS NULL THEN 'messages charged without a price'
        WHEN d.final_price_nano IS NULL THEN 'final report has no total'
        WHEN b.currencies > 1 THEN 'messages priced in several currencies'
        WHEN d.final_currency <> b.currency THEN 'final report in another currency'
        WHEN d.final_price_nano = b.total_nano THEN NULL
        ELSE 'totals differ'
    END AS reason
FROM totals b
LEFT JOIN dispatches d ON b.api = 'dispatch' AND d.dispatch_uuid = b.workflow_id
""",
    "billing_reconciliation": f"""
SELECT
    d.dispatch_uuid,
    d.first_seen_at,
    d.final_status,
    d.final_timestamp,
    d.final_price AS final_report_total,
    d.messages_price AS messages_total,
    coalesce(d.final_currency, d.messages_currency) AS currency,
    {signed_format('d.final_price_nano - d.messages_price_nano')} AS difference,
    d.final_price_nano - d.messages_price_nano AS difference_nano,
    CASE
        WHEN d.final_status IS NULL THEN 'final report missing'
        WHEN d.messages_currency LIKE '%,%' THEN 'messages priced in several currencies'
        WHEN d.final_currency <> d.messages_currency THEN 'currencies differ'
        WHEN d.messages_price_nano IS NULL AND d.final_price_nano IS NULL THEN 'no prices reported'
        WHEN d.messages_price_nano IS NULL THEN 'no message prices reported'
        WHEN d.final_price_nano IS NULL THEN 'final report has no total'
        WHEN d.final_price_nano = d.messages_price_nano THEN NULL
        WHEN EXISTS (
            SELECT 1 FROM messages m WHERE m.dispatch_uuid = d.dispatch_uuid
            AND m.price_nano IS NOT NULL AND ({CHARGED_AT}) > d.final_timestamp
        ) THEN 'a message was charged after the final report'
        ELSE 'totals differ'
    END AS reason,
    'dispatch' AS api,
    d.dispatch_uuid AS workflow_id
FROM dispatches d
UNION ALL
SELECT
    NULL, w.first_seen_at, NULL, NULL, NULL, w.price, w.currency, NULL, NULL,
    'Messages API workflow: Vonage sends no total to compare with (its cost is the sum of its legs)',
    'messages', w.workflow_id
FROM workflows w WHERE w.api = 'messages'
""",
    # What each failover workflow of either API cost, one row per currency: never a sum
    # across currencies (the priced lines of billing_by_workflow).
    "workflow_costs": """
SELECT workflow_id, api, currency, priced_messages, channels, total AS price,
    total_nano AS price_nano
FROM billing_by_workflow
WHERE workflow_id IS NOT NULL AND total_nano IS NOT NULL
""",
    "reconciliation_discrepancies": """
SELECT dispatch_uuid, reason, first_seen_at, final_status, final_timestamp, final_report_total,
    messages_total, currency, difference, difference_nano
FROM billing_reconciliation
WHERE reason IS NOT NULL AND api = 'dispatch'
""",
    # Each message's step in its failover workflow of either API (1 = first channel tried)
    # and whether it reached its recipient (delivered or read).
    "dispatch_steps": f"""
SELECT
    dispatch_uuid,
    api,
    coalesce(dispatch_uuid, workflow_id) AS workflow_id,
    -- its leg number when known (a leg never heard of leaves a gap), else its arrival order
    coalesce(workflow_position,
             row_number() OVER (PARTITION BY coalesce(dispatch_uuid, workflow_id)
                                ORDER BY workflow_position IS NULL, workflow_position,
                                first_seen_at, message_uuid)) AS step,
    message_uuid,
    channel,
    status,
    CASE WHEN {reached()} THEN 1 ELSE 0 END AS delivered,
    CASE WHEN {reached()} THEN {reached_at()} END AS delivered_at
FROM messages
WHERE coalesce(dispatch_uuid, workflow_id) IS NOT NULL
""",
    "messages_stuck_at_submitted": f"""
SELECT
    m.message_uuid,
    m.api,
    m.dispatch_uuid,
    m.workflow_id,
    m.channel,
    m.workflow_position AS step,
    coalesce(m.submitted_at, m.first_seen_at, m.final_report_at) AS submitted_at,
    {hours_since('coalesce(m.submitted_at, m.first_seen_at, m.final_report_at)')} AS hours_submitted,
    m.final_report_status,
    d.final_status AS dispatch_final_status,
    d.delivered_channel AS dispatch_delivered_channel
FROM messages m LEFT JOIN dispatches d ON d.dispatch_uuid = m.dispatch_uuid
WHERE m.status = 'submitted'
""",
    # Failed workflows of either API with why: the code and reason of the last leg (the one
    # whose failure ended the workflow; error_reason is both APIs' error text).
    "failed_workflows": f"""
SELECT
    w.workflow_id,
    w.api,
    w.legs,
    w.legs_seen,
    w.channels,
    l.channel AS last_leg_channel,
    l.status AS last_leg_status,
    l.error_code,
    l.error_reason,
    w.first_seen_at,
    w.last_seen_at
FROM workflows w
LEFT JOIN messages l ON l.message_uuid = (
    SELECT m.message_uuid FROM messages m
    WHERE {LEG_OF_W}
    ORDER BY m.workflow_position IS NULL, m.workflow_position DESC, m.last_seen_at DESC
    LIMIT 1)
WHERE w.outcome = 'failed'
""",
    # Workflows of either API missing a leg below the highest leg seen (workflows.incomplete):
    # which legs were heard of, and how long ago the last one was.
    "incomplete_workflows": f"""
SELECT
    w.workflow_id,
    w.api,
    w.legs,
    (SELECT group_concat(workflow_position, ',') FROM (
        SELECT DISTINCT m.workflow_position FROM messages m
        WHERE {LEG_OF_W}
          AND m.workflow_position IS NOT NULL
        ORDER BY m.workflow_position)) AS legs_heard_of,
    w.channels,
    w.outcome,
    w.delivered_channel,
    w.first_seen_at,
    w.last_seen_at,
    {hours_since('w.last_seen_at')} AS hours_since_last_event
FROM workflows w
WHERE w.incomplete
""",
    "dispatches_without_final_report": f"""
SELECT
    dispatch_uuid,
    first_seen_at,
    last_seen_at,
    {hours_since('first_seen_at')} AS hours_waiting,
    message_count,
    channels,
    delivered_channel,
    messages_price,
    messages_currency
FROM dispatches
WHERE final_status IS NULL
""",
}


# Totals per channel and currency over any period of charge days (:first_day to :last_day,
# inclusive YYYY-MM-DD), added up from billing_by_day: `receiver export billing --by channel`.
PERIOD_TOTALS = f"""
SELECT
    :first_day AS first_day,
    :last_day AS last_day,
    channel,
    currency,
    sum(messages) AS messages,
    sum(priced_messages) AS priced_messages,
    sum(unpriced_messages) AS unpriced_messages,
    {money.sql_format('sum(total_nano)')} AS total,
    sum(total_nano) AS total_nano
FROM billing_by_day
WHERE day >= :first_day AND day <= :last_day
GROUP BY channel, currency
"""


# --- Reconciliation against Vonage's own records (vonage_records, `receiver vonage-records`) ---
#
# Which of our messages an import covers: an import of product MESSAGES covers every message
# of ours (Dispatch legs are sent by the Messages API and Vonage reports them under MESSAGES);
# an import of product SMS covers our sms-channel messages. A message of ours is covered when
# its time (its earliest status, else its final report's) falls in [date_start, date_end) of
# such an import. A record joins our message on message_id = message_uuid, whatever its range.
COVERING_IMPORT = """EXISTS (
    SELECT 1 FROM vonage_record_imports i
    WHERE coalesce(m.first_seen_at, m.final_report_at) >= i.date_start
      AND coalesce(m.first_seen_at, m.final_report_at) < i.date_end
      AND (i.product = 'MESSAGES' OR (i.product = 'SMS' AND m.channel = 'sms'))
)"""

# Vonage's record statuses (MESSAGES: free text such as submitted, delivered, read, rejected,
# undeliverable; SMS: accepted, buffered, delivered, expired, failed, rejected, unknown) as
# ours. Compared by outcome: reached (delivered, read), failed (rejected, undeliverable) or
# pending (submitted). A status not listed (e.g. unknown) gives no verdict: never status_differs.
VONAGE_STATUS_AS_OURS = {
    "submitted": "submitted", "accepted": "submitted", "buffered": "submitted",
    "delivered": "delivered", "read": "read",
    "rejected": "rejected", "undeliverable": "undeliverable", "failed": "undeliverable",
    "expired": "undeliverable",
}
OUTCOME = {"submitted": "pending", "delivered": "reached", "read": "reached",
           "rejected": "failed", "undeliverable": "failed"}


def _case(expression, mapping):
    whens = " ".join(f"WHEN '{key}' THEN '{value}'" for key, value in mapping.items())
    return f"CASE {expression} {whens} END"


VONAGE_OUTCOME = _case("lower(r.status)", {k: OUTCOME[v] for k, v in VONAGE_STATUS_AS_OURS.items()})
OUR_OUTCOME = _case("m.status", OUTCOME)


def billed(column):
    """SQL: ``column`` of our message ``m``'s billing line (its billing_lines row, read from
    ``m`` itself: one lookup less per record), NULL when ``m`` was not charged."""
    return f"CASE WHEN ({charged_at('m.')}) IS NOT NULL THEN m.{column} END"


# One class per message, the first that applies: no_callbacks (Vonage has it, no status
# callback of ours: no messages row, or one made from a Dispatch final report alone),
# currency_differs (both priced, in two currencies), price_differs (a missing price counts as
# zero), status_differs (outcomes differ), else match. not_in_vonage_records is the other half.
RECONCILIATION_CLASS = f"""CASE
    WHEN m.message_uuid IS NULL OR m.event_count = 0 THEN 'no_callbacks'
    WHEN r.price_nano IS NOT NULL AND {billed('price_nano')} IS NOT NULL
        AND r.currency <> {billed('currency')} THEN 'currency_differs'
    WHEN coalesce(r.price_nano, 0) <> coalesce({billed('price_nano')}, 0) THEN 'price_differs'
    WHEN ({VONAGE_OUTCOME}) <> ({OUR_OUTCOME}) THEN 'status_differs'
    ELSE 'match'
END"""
CLASSES = ("match", "price_differs", "currency_differs", "status_differs", "no_callbacks",
           "not_in_vonage_records")


# The raw columns of vonage_reconciliation over a record ``r``, our message ``m`` and its
# billing line (``billed``).
RAW_COLUMNS = {
    "message_uuid": "coalesce(r.message_id, m.message_uuid)",
    "class": RECONCILIATION_CLASS,
    "day": "date(coalesce(r.date_received, m.first_seen_at, m.final_report_at))",
    "sent_at": "coalesce(r.date_received, m.first_seen_at, m.final_report_at)",
    "api": "m.api",
    "workflow_id": "coalesce(m.dispatch_uuid, m.workflow_id)",
    "channel": "coalesce(m.channel, r.channel)",
    "vonage_status": "r.status",
    "our_status": "m.status",
    "vonage_price": "r.price",
    "vonage_price_nano": "r.price_nano",
    "vonage_currency": "r.currency",
    "billed_price": billed("price"),
    "billed_price_nano": billed("price_nano"),
    "billed_currency": billed("currency"),
    "status_callbacks": "m.event_count",
    "import_id": "r.import_id",
    "vonage_product": "r.product",
    "vonage_error_code": "r.error_code",
    "client_ref": "coalesce(r.client_ref, m.client_ref)",
}


def _reconciliation_rows(columns=tuple(RAW_COLUMNS)):
    """SQL: one row per record and per message of ours in an import's range not recorded,
    with only ``columns`` of RAW_COLUMNS: SQLite (3.40) computes every column of a UNION ALL
    subquery, so the totals read a narrow copy instead of vonage_reconciliation.
    Our messages not recorded are class not_in_vonage_records and read every ``r`` column NULL."""
    def select(record_side):
        picked = {name: RAW_COLUMNS[name] for name in columns}
        if not record_side:
            picked = {name: re.sub(r"\br\.\w+", "NULL", expression)
                      for name, expression in picked.items()}
            if "class" in picked:
                picked["class"] = "'not_in_vonage_records'"
        return ",\n    ".join(f"{expression} AS {name}" for name, expression in picked.items())
    return f"""
    SELECT {select(True)}
    FROM vonage_records r
    LEFT JOIN messages m ON m.message_uuid = r.message_id
    UNION ALL
    SELECT {select(False)}
    FROM messages m
    WHERE NOT EXISTS (SELECT 1 FROM vonage_records x WHERE x.message_id = m.message_uuid)
      AND {COVERING_IMPORT}"""


# Columns worked out from the raw ones outside the UNION ALL, so that a query reading few
# columns (the per-day totals) never computes them: SQLite leaves unused outer columns alone.
DIFFERENCE_NANO = ("CASE WHEN vonage_currency IS NULL OR billed_currency IS NULL "
                   "OR vonage_currency = billed_currency "
                   "THEN coalesce(vonage_price_nano, 0) - coalesce(billed_price_nano, 0) END")
RECONCILIATION = f"""
SELECT message_uuid, class, day, sent_at, api, workflow_id, channel, vonage_status,
    {_case("lower(vonage_status)", VONAGE_STATUS_AS_OURS)} AS vonage_status_as_ours,
    our_status, vonage_price, vonage_price_nano, vonage_currency, billed_price,
    billed_price_nano, billed_currency,
    {signed_format(DIFFERENCE_NANO)} AS difference,
    {DIFFERENCE_NANO} AS difference_nano,
    status_callbacks, import_id, vonage_product, vonage_error_code, client_ref
FROM ({_reconciliation_rows()}
)
"""


def _per_currency(keys, where="", extra_pairs="", extra_lines="", extra_blanks="", extra_totals="",
                  extra_columns=()):
    """SQL: vonage_reconciliation summed per ``keys`` and currency, never across currencies,
    read from its rows with only the columns needed (``keys``, ``extra_columns``, the totals').

    First per ``keys`` and currency pair (one scan of the view, materialized: small), then as
    lines of one currency each: the pair's own (Vonage's currency, else ours) with both
    amounts when they share it, and for a pair of two currencies (currency_differs) a second
    line holding our amount alone, which counts no message."""
    counts = [f"sum(class = '{c}') AS {c}" for c in CLASSES]
    same = "vc IS NULL OR bc IS NULL OR vc = bc"
    keys_list = ", ".join(keys)
    columns = (*keys, *extra_columns, "class", "vonage_currency", "billed_currency", "import_id",
               "vonage_price_nano", "billed_price_nano")
    return f"""
WITH pairs AS MATERIALIZED (
    SELECT {keys_list}, vonage_currency AS vc, billed_currency AS bc,
        count(*) AS messages,
        count(import_id) AS vonage_records,
        count(import_id) - count(vonage_price_nano) AS vonage_unpriced,
        sum(vonage_price_nano) AS vonage_nano,
        count(billed_price_nano) AS billed_messages,
        sum(billed_price_nano) AS billed_nano,
        {", ".join(counts)}{extra_pairs}
    FROM ({_reconciliation_rows(columns)}
    ) {where}
    GROUP BY {keys_list}, vc, bc
),
lines AS (
    SELECT {keys_list}, coalesce(vc, bc) AS currency, messages, vonage_records, vonage_unpriced,
        vonage_nano, CASE WHEN {same} THEN billed_messages ELSE 0 END AS billed_messages,
        CASE WHEN {same} THEN billed_nano END AS billed_nano,
        {", ".join(CLASSES)}{extra_lines}
    FROM pairs
    UNION ALL
    SELECT {keys_list}, bc, 0, 0, 0, NULL, billed_messages, billed_nano,
        {", ".join("0" for _ in CLASSES)}{extra_blanks}
    FROM pairs WHERE NOT ({same})
)
SELECT {keys_list}, currency{extra_totals},
    sum(messages) AS messages,
    sum(vonage_records) AS vonage_records,
    sum(vonage_unpriced) AS vonage_unpriced,
    {money.sql_format('sum(vonage_nano)')} AS vonage_total,
    sum(vonage_nano) AS vonage_total_nano,
    sum(billed_messages) AS billed_messages,
    {money.sql_format('sum(billed_nano)')} AS billed_total,
    sum(billed_nano) AS billed_total_nano,
    {signed_format(DIFFERENCE)} AS difference,
    {DIFFERENCE} AS difference_nano,
    {", ".join(f"sum({c}) AS {c}" for c in CLASSES)}
FROM lines
GROUP BY {keys_list}, currency"""


DIFFERENCE = "coalesce(sum(vonage_nano), 0) - coalesce(sum(billed_nano), 0)"
WORKFLOW_TOTALS = _per_currency(
    ("api", "workflow_id"), "WHERE workflow_id IS NOT NULL",
    extra_pairs=""",
        min(sent_at) AS first_sent_at,
        sum(status_callbacks > 0) AS legs_with_callbacks,
        group_concat(CASE WHEN import_id IS NOT NULL THEN channel END) AS vonage_channels,
        group_concat(CASE WHEN status_callbacks > 0 THEN channel END) AS our_channels""",
    extra_lines=", first_sent_at, legs_with_callbacks, vonage_channels, our_channels",
    extra_blanks=", first_sent_at, 0, NULL, NULL",
    extra_columns=("sent_at", "status_callbacks", "channel"),
    extra_totals=""",
    min(first_sent_at) AS first_sent_at, sum(legs_with_callbacks) AS legs_with_callbacks,
    group_concat(vonage_channels) AS vonage_channels, group_concat(our_channels) AS our_channels""",
)

VIEWS.update({
    # One row per message Vonage recorded or we hold in the range of an import.
    "vonage_reconciliation": RECONCILIATION,
    # Per day (Vonage's date_received, else our first status; UTC), channel and currency.
    "vonage_reconciliation_by_day": _per_currency(("day", "channel")),
    # Per failover workflow of either API and currency: its legs as Vonage recorded and billed
    # them against what we derived (legs planned, legs with callbacks).
    "vonage_reconciliation_workflows": f"""
SELECT t.api, t.workflow_id, t.currency, t.first_sent_at, w.legs AS legs_planned, w.legs_seen,
    t.legs_with_callbacks, t.vonage_channels, t.our_channels,
    {", ".join(f"t.{c}" for c in ("messages", "vonage_records", "vonage_unpriced", "vonage_total",
                                  "vonage_total_nano", "billed_messages", "billed_total",
                                  "billed_total_nano", "difference", "difference_nano", *CLASSES))}
FROM ({WORKFLOW_TOTALS}) t
LEFT JOIN workflows w ON w.workflow_id = t.workflow_id
""",
})


def create_views(conn):
    """Drop and recreate every view (inside the caller's transaction)."""
    for name in reversed(VIEWS):  # a view may read one defined before it
        conn.execute(f"DROP VIEW IF EXISTS {name}")
    for name, select in VIEWS.items():
        conn.execute(f"CREATE VIEW {name} AS {select}")
