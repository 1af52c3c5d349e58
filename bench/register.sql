-- pgbench: the register transaction's SQL, as the API sends it (make bench, figure 1).
BEGIN;
WITH new_market AS (
    INSERT INTO markets (id, name, issuer_id, entity_id, status, created_at, updated_at)
    VALUES (gen_random_uuid(), 'Bench Market', gen_random_uuid(), gen_random_uuid(),
            'pending_approval', now(), now())
    RETURNING id
)
INSERT INTO assets (id, market_id, asset_type, token_symbol, token_name, total_supply, asset_details)
SELECT gen_random_uuid(), id, 'real_estate', 'BENCH', 'Bench Token', 1000000, '{}' FROM new_market;
WITH inserted AS (
    INSERT INTO outbox (event_id, stream, event_type, source, aggregate_type, aggregate_id,
                        payload, context, occurred_at)
    SELECT gen_random_uuid()::text, 'markets:events', t, 'market_backend', 'market',
           gen_random_uuid()::text, '{"market": {}, "asset": {}}'::jsonb, '{}'::jsonb, now()
    FROM unnest(ARRAY['market.registered', 'market.approval_requested']) AS t
    ON CONFLICT (event_id) DO NOTHING
    RETURNING event_id
)
SELECT event_id, pg_notify('outbox', '') FROM inserted;
COMMIT;
