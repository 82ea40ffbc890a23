"""SQL views over the event store: billing lines and per-dispatch reconciliation.

Recreated by ``receiver init-db`` so that their definitions follow the receiver's version.
Amounts are summed as integer billionths (``*_nano``) and shown as exact decimal text.
"""

from . import money


def signed_format(expression):
    """Exact decimal text of a possibly negative nano-amount."""
    return (
        f"CASE WHEN ({expression}) < 0 THEN '-' || {money.sql_format(f'-({expression})')} "
        f"ELSE {money.sql_format(expression)} END"
    )


# SMS and MMS are charged when submitted; WhatsApp, Viber and Messenger when delivered
# (Vonage's Messages status-callback concept page). A delivered message whose submitted
# callback never came is still charged, at the earliest later status.
CHARGED_AT = """CASE
    WHEN channel IN ('sms', 'mms') THEN coalesce(submitted_at, delivered_at, read_at)
    ELSE coalesce(delivered_at, read_at)
END"""

CHARGED_STATUS = """CASE
    WHEN channel IN ('sms', 'mms') THEN
        CASE WHEN submitted_at IS NOT NULL THEN 'submitted'
             WHEN delivered_at IS NOT NULL THEN 'delivered' ELSE 'read' END
    ELSE CASE WHEN delivered_at IS NOT NULL THEN 'delivered' ELSE 'read' END
END"""

VIEWS = {
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
    # across currencies.
    "workflow_costs": f"""
SELECT
    coalesce(dispatch_uuid, workflow_id) AS workflow_id,
    api,
    currency,
    count(*) AS priced_messages,
    group_concat(channel, ',') AS channels,
    {money.sql_format('sum(price_nano)')} AS price,
    sum(price_nano) AS price_nano
FROM messages
WHERE price_nano IS NOT NULL AND coalesce(dispatch_uuid, workflow_id) IS NOT NULL
GROUP BY 1, api, currency
""",
}


def create_views(conn):
    """Drop and recreate every view (inside the caller's transaction)."""
    for name, select in VIEWS.items():
        conn.execute(f"DROP VIEW IF EXISTS {name}")
        conn.execute(f"CREATE VIEW {name} AS {select}")
