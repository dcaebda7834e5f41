"""The workflow worker's append on PostgreSQL: event_store_append_rows().

Revision ID: 0011_events_append_rows
Revises: 0010_chat_mark
"""

from __future__ import annotations

from alembic import op

revision = "0011_events_append_rows"
down_revision = "0010_chat_mark"
branch_labels = None
depends_on = None

# What the workflow worker calls for a batch of rows (rabbitry.events.postgresql_writer), in
# place of event_store_append() (which stays, for the appends that want each event's numbers
# back). The same locks, order and numbering, for less of the database's time per event:
# - a plain INSERT, without ON CONFLICT: a message stored before fails it on the unique
#   constraint on the message id (nothing is kept), where ON CONFLICT probed that index once
#   more per event before each insert (17 % of the call's time) and wrote a confirmation
#   record per row; the caller writes such a batch again the longer way, as after RR001;
# - the head version of an (entity, id) the caller knows (p_head, NULL where it does not) is
#   taken from it instead of read from the index (19 % of the call's time); a head it knows
#   wrong can only be too low (versions are only ever added, and it learnt it from a commit),
#   and then the insert fails on the unique constraint on (entity, entity_id, version), and
#   the caller forgets its heads and tries again;
# - it returns the version of each row (the caller's heads for next time), not a row per
#   event;
# - fewer values for the driver to encode one by one (each array element costs it a few
#   checks in Python): the types, users and data come as one text each, their values
#   separated by U+001F, which none of them can hold (a change type, a user id or "system",
#   JSON text, whose encoder escapes every control character; data NULL is "-", never JSON
#   text of an object); so do the message ids when none holds it (p_message_ids; else they
#   come as an array, p_message_id); the entity names and the times as their distinct values
#   (a batch holds a few models' events, and its messages mostly share their second) and an
#   index into them (from 1) per event; the places NULL when each is 1 (no two events of one
#   entity in the batch).
# A place is the event's among its entity's in the batch, from 1 in arrival order.
# The heads are read by a statement of their own after the locks were granted (a VOLATILE
# function takes a fresh snapshot for each statement), as the insert read them before.
APPEND_ROWS = """
CREATE FUNCTION event_store_append_rows(
    p_entities varchar[], p_entity int[], p_entity_id bigint[], p_place int[], p_head int[],
    p_types text, p_users text, p_data text, p_message_ids text, p_message_id varchar[],
    p_times timestamptz[], p_time int[], p_recorded_at timestamptz, p_locks bigint[]
) RETURNS int[]
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    versions int[];
BEGIN
    PERFORM pg_advisory_xact_lock(k) FROM unnest(p_locks) WITH ORDINALITY AS t(k, n) ORDER BY n;
    SELECT array_agg(coalesce(p_place[n::int], 1)
                     + coalesce(h, (SELECT max(s.version) FROM event_store AS s
                                    WHERE s.entity = p_entities[e] AND s.entity_id = i), 0)
                     ORDER BY n)
    INTO versions
    FROM unnest(p_entity, p_entity_id, p_head) WITH ORDINALITY AS x(e, i, h, n);
    INSERT INTO event_store
        (entity, entity_id, version, type, "user", data, message_id, occurred_at, recorded_at)
    SELECT p_entities[e], i, versions[n::int], t, u, CAST(d AS json), m, p_times[o],
           p_recorded_at
    FROM unnest(p_entity, p_entity_id, string_to_array(p_types, E'\\x1f'),
                string_to_array(p_users, E'\\x1f'), string_to_array(p_data, E'\\x1f', '-'),
                coalesce(p_message_id, string_to_array(p_message_ids, E'\\x1f')), p_time)
         WITH ORDINALITY AS x(e, i, t, u, d, m, o, n)
    ORDER BY n;
    RETURN versions;
END
$$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(APPEND_ROWS)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "DROP FUNCTION event_store_append_rows(varchar[], int[], bigint[], int[], int[], text,"
            " text, text, text, varchar[], timestamptz[], int[], timestamptz, bigint[])"
        )
