"""The event store's append on PostgreSQL in one statement: event_store_append().

Revision ID: 0009_events_append
Revises: 0008_backoffice_logouts
"""

from __future__ import annotations

from alembic import op

revision = "0009_events_append"
down_revision = "0008_backoffice_logouts"
branch_labels = None
depends_on = None

# One call stores a batch (rabbitry.events.postgresql_writer): it takes the batch's advisory
# locks, then inserts the events, each numbered by its place among its entity's events in the
# batch (p_place) plus its entity's head version, read by the insert. Called outside a
# transaction it is one round trip, the commit included (three with BEGIN and COMMIT apart).
# A VOLATILE function takes a fresh snapshot for each statement in it, so the insert, started
# after the locks were granted, reads heads that include every event committed by a writer it
# waited for. A message stored before is left out by the insert, and the call then fails with
# RR001 (nothing is kept): numbered around it, the versions would have a gap; the caller writes
# the batch again the longer way.
APPEND = """
CREATE FUNCTION event_store_append(
    p_entity varchar[], p_entity_id bigint[], p_place int[], p_type varchar[],
    p_user varchar[], p_data text[], p_message_id varchar[], p_occurred_at timestamptz[],
    p_recorded_at timestamptz, p_locks bigint[]
) RETURNS TABLE (r_message_id varchar, r_sequence bigint, r_version int)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    stored bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(k) FROM unnest(p_locks) WITH ORDINALITY AS t(k, n) ORDER BY n;
    RETURN QUERY
    INSERT INTO event_store AS s
        (entity, entity_id, version, type, "user", data, message_id, occurred_at, recorded_at)
    SELECT e, i, v + coalesce((SELECT max(h.version) FROM event_store AS h
                               WHERE h.entity = e AND h.entity_id = i), 0),
           t, u, CAST(d AS json), m, o, p_recorded_at
    FROM unnest(p_entity, p_entity_id, p_place, p_type, p_user, p_data, p_message_id,
                p_occurred_at) WITH ORDINALITY AS x(e, i, v, t, u, d, m, o, n)
    ORDER BY n
    ON CONFLICT (message_id) DO NOTHING
    RETURNING s.message_id, s.sequence, s.version;
    GET DIAGNOSTICS stored = ROW_COUNT;
    IF stored <> cardinality(p_message_id) THEN
        RAISE EXCEPTION 'a message of the batch was stored before' USING ERRCODE = 'RR001';
    END IF;
END
$$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(APPEND)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "DROP FUNCTION event_store_append(varchar[], bigint[], int[], varchar[], varchar[],"
            " text[], varchar[], timestamptz[], timestamptz, bigint[])"
        )
