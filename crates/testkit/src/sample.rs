//! A sample shop database with a live write workload, for `pglive demo`
//! and anyone who wants a realistic small database to migrate: many
//! types (`numeric` NaN and infinities, arrays, `jsonb`, `json`), a
//! partitioned table, TOAST-sized rows, a table with `REPLICA IDENTITY
//! FULL`, generated columns, sequences and a large object.

/// The sample database's tables and indexes.
pub const SCHEMA: &str = "
CREATE TABLE customers (
    id bigserial PRIMARY KEY,
    name text NOT NULL,
    email text,
    balance numeric,
    rating double precision,
    tags text[],
    profile jsonb,
    signed_up timestamptz NOT NULL DEFAULT now(),
    name_length int GENERATED ALWAYS AS (length(name)) STORED
);
CREATE TABLE orders (
    id bigserial,
    customer_id bigint NOT NULL,
    placed date NOT NULL,
    amount numeric(12,2) NOT NULL,
    status text NOT NULL,
    PRIMARY KEY (id, placed)
) PARTITION BY RANGE (placed);
CREATE TABLE orders_2024 PARTITION OF orders FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE orders_2025 PARTITION OF orders FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE orders_2026 PARTITION OF orders FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
CREATE TABLE documents (id bigserial PRIMARY KEY, title text NOT NULL, body text, revision int NOT NULL DEFAULT 1);
CREATE TABLE audit_log (at timestamptz NOT NULL DEFAULT now(), actor text, action text, detail json);
ALTER TABLE audit_log REPLICA IDENTITY FULL;
CREATE INDEX ON orders (customer_id);
CREATE INDEX ON customers (email);
";

/// Rows for [`SCHEMA`]: about `units` MB, and one large object.
pub fn load(units: u64) -> String {
    format!(
        "INSERT INTO customers (name, email, balance, rating, tags, profile)
         SELECT 'customer ' || g, 'c' || g || '@example.com',
                CASE WHEN g % 97 = 0 THEN 'NaN'::numeric WHEN g % 89 = 0 THEN 'Infinity' ELSE (g % 10000) / 7.0 END,
                CASE WHEN g % 83 = 0 THEN '-Infinity'::float8 ELSE g / 3.0 END,
                ARRAY['tier' || (g % 3), NULL, 'quote\"d'], jsonb_build_object('visits', g % 50, 'vip', g % 11 = 0)
           FROM generate_series(1, {c}) g;
         INSERT INTO orders (customer_id, placed, amount, status)
         SELECT 1 + g % {c}, date '2024-01-01' + (g % 1000), (g % 100000) / 100.0, (ARRAY['new','paid','shipped'])[1 + g % 3]
           FROM generate_series(1, {o}) g;
         INSERT INTO documents (title, body)
         SELECT 'document ' || g, (SELECT string_agg(md5(g::text || i::text), ' ') FROM generate_series(1, 120) i)
           FROM generate_series(1, {d}) g;
         INSERT INTO audit_log (actor, action, detail)
         SELECT 'user' || (g % 100), 'login', json_build_object('n', g) FROM generate_series(1, {a}) g;
         SELECT lo_from_bytea(0, decode(repeat('cafe', 1000), 'hex'));
         ANALYZE;",
        c = units * 1_500,
        o = units * 6_000,
        d = units * 60,
        a = units * 2_000,
    )
}

/// One source transaction of the live workload, chosen by `n`.
pub fn transaction(n: u64) -> String {
    let id = 1 + (n * 7919) % 1000;
    match n % 6 {
        0 => format!(
            "BEGIN; INSERT INTO orders (customer_id, placed, amount, status) VALUES ({id}, date '2026-01-01' + {}, {}.50, 'new');
                    UPDATE customers SET balance = balance + 1 WHERE id = {id}; COMMIT;",
            n % 300,
            n % 1000
        ),
        1 => format!("UPDATE orders SET status = 'shipped' WHERE id = {} AND status <> 'shipped';", 1 + n % 5000),
        2 => format!("INSERT INTO audit_log (actor, action, detail) VALUES ('demo', 'write', '{{\"n\": {n}}}');"),
        3 => format!("UPDATE documents SET revision = revision + 1 WHERE id = {};", 1 + n % 50),
        4 => format!("UPDATE orders SET placed = date '2026-06-01' WHERE id = {} AND placed < '2025-01-01';", 1 + (n * 31) % 5000),
        _ => format!(
            "DELETE FROM audit_log WHERE ctid = (SELECT ctid FROM audit_log WHERE actor = 'user{}' LIMIT 1);",
            n % 100
        ),
    }
}
