-- pgbench: the approval consumer's transaction for one read batch of :batch approvals,
-- statement for statement as app/approvals/service.py (apply_events) sends them through its
-- repositories (make bench, figure 4). The consumer sends arrays of ids; here they are built
-- from the batch's market numbers (market n's id is md5('bench-market-' || n)::uuid, as
-- bench/consumer.py seeds them). Each client walks batches of its own, round after round,
-- so clients never wait for each other's row locks, as consumers given distinct stream
-- entries do not.
\set round :round + 1
\set first ((:round * :clients + :client_id) % :batches) * :batch + 1
\set last :first + :batch - 1
BEGIN;
-- markets.lock_many
SELECT m.id, m.name, m.issuer_id, m.entity_id, m.status, m.rejection_reason, m.decided_by,
       m.decided_at, m.created_at, m.updated_at,
       a.id AS asset_id, a.asset_type, a.token_symbol, a.token_name, a.total_supply,
       a.asset_details
FROM markets m JOIN assets a ON a.market_id = m.id
WHERE m.id = ANY(ARRAY(SELECT md5('bench-market-' || n)::uuid
                       FROM generate_series(:first::int, :last::int) AS n))
ORDER BY m.id FOR UPDATE OF m;
-- processed_events.processed_among
SELECT event_id FROM processed_events
WHERE event_id = ANY(ARRAY(SELECT 'bench-' || :client_id || '-' || :round || '-' || n
                           FROM generate_series(:first::int, :last::int) AS n));
-- processed_events.record_processed_events
INSERT INTO processed_events (event_id, event_type, source, processing_status,
                              processing_error, payload, received_at, processed_at, attempts)
SELECT r.event_id, r.event_type, r.source, r.status, r.error, r.payload::jsonb,
       coalesce(r.received_at, now()), now(), r.attempts
FROM (SELECT 'bench-' || :client_id || '-' || :round || '-' || n AS event_id,
             'market.approved' AS event_type, 'entity_permissions_core' AS source,
             'success' AS status, NULL::text AS error,
             jsonb_build_object(
                 'payload', jsonb_build_object('market_id', md5('bench-market-' || n)::uuid,
                                               'decision', 'approved'),
                 'context', jsonb_build_object('actor_id', 'bench-admin'))::text AS payload,
             NULL::timestamptz AS received_at, 1 AS attempts, n AS position
      FROM generate_series(:first::int, :last::int) AS n) AS r
ORDER BY r.position
ON CONFLICT (event_id) DO NOTHING
RETURNING event_id;
-- markets.save_decisions
UPDATE markets AS m
SET status = d.status, rejection_reason = d.rejection_reason,
    decided_by = d.decided_by, decided_at = d.decided_at, updated_at = d.updated_at
FROM (SELECT md5('bench-market-' || n)::uuid AS id, 'active' AS status,
             NULL::text AS rejection_reason, 'bench-admin' AS decided_by,
             now() AS decided_at, now() AS updated_at
      FROM generate_series(:first::int, :last::int) AS n) AS d
WHERE m.id = d.id;
-- markets.record_approvals
INSERT INTO market_approval_events (market_id, event_id, decision, actor_id, reason,
                                    occurred_at, processed_at)
SELECT md5('bench-market-' || n)::uuid, 'bench-' || :client_id || '-' || :round || '-' || n,
       'approved', 'bench-admin', NULL, now(), now()
FROM generate_series(:first::int, :last::int) AS n;
-- outbox.enqueue: market.activated and token.deployment_requested per market, one NOTIFY
WITH inserted AS (
    INSERT INTO outbox (event_id, stream, event_type, source, aggregate_type, aggregate_id,
                        payload, context, occurred_at)
    SELECT e.event_id, e.stream, e.event_type, e.source, e.aggregate_type, e.aggregate_id,
           e.payload::jsonb, e.context::jsonb, e.occurred_at
    FROM (SELECT gen_random_uuid()::text AS event_id, :stream::text AS stream,
                 t.event_type, 'market_backend' AS source, 'market' AS aggregate_type,
                 md5('bench-market-' || n)::uuid::text AS aggregate_id,
                 CASE t.event_type
                     WHEN 'market.activated' THEN jsonb_build_object(
                         'market_id', md5('bench-market-' || n)::uuid,
                         'entity_id', md5('bench-entity-' || n)::uuid,
                         'decided_by', 'bench-admin', 'decided_at', now())
                     ELSE jsonb_build_object(
                         'market_id', md5('bench-market-' || n)::uuid,
                         'issuer_id', md5('bench-issuer-' || n)::uuid,
                         'asset_type', 'real_estate', 'token_symbol', 'BENCH',
                         'token_name', 'Bench', 'total_supply', '1000000')
                 END::text AS payload,
                 jsonb_build_object('causation_id', 'bench-' || n,
                                    'actor_id', 'bench-admin')::text AS context,
                 now() AS occurred_at, n * 2 + t.k AS position
          FROM generate_series(:first::int, :last::int) AS n
          CROSS JOIN (VALUES (0, 'market.activated'),
                             (1, 'token.deployment_requested')) AS t(k, event_type)) AS e
    ORDER BY e.position
    ON CONFLICT (event_id) DO NOTHING
    RETURNING event_id
)
SELECT event_id, pg_notify('outbox', '') FROM inserted;
COMMIT;
