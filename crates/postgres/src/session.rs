//! Session settings that every pglive connection pins.

/// The settings that change how values are printed or parsed as text, which
/// rows a query sees, or when a statement is cancelled. Every session that
/// moves values (replication, COPY, apply) sets exactly these, so nothing
/// depends on a server's, database's or role's defaults:
///
/// - `row_security = off`: a table whose policies would hide rows from the
///   role is an error, never a silently filtered copy or count;
/// - no statement, lock or idle-in-transaction timeout: a copy part or a
///   batch takes as long as its data needs, and a role's or database's
///   timeout would cancel it again on every retry;
/// - `standard_conforming_strings = on`: literals quoted by pglive mean what
///   they say;
/// - `default_transaction_isolation = read committed`: a database default of
///   `serializable` would fail concurrent copy parts and lanes (sessions
///   that need a snapshot ask for `REPEATABLE READ` themselves).
pub const SESSION_SETTINGS: &[(&str, &str)] = &[
    ("client_encoding", "UTF8"),
    ("DateStyle", "ISO, MDY"),
    ("IntervalStyle", "postgres"),
    ("extra_float_digits", "3"),
    ("bytea_output", "hex"),
    ("TimeZone", "UTC"),
    ("lc_monetary", "C"),
    ("xmloption", "content"),
    ("standard_conforming_strings", "on"),
    ("row_security", "off"),
    ("statement_timeout", "0"),
    ("lock_timeout", "0"),
    ("idle_in_transaction_session_timeout", "0"),
    ("default_transaction_isolation", "read committed"),
];

/// The settings as a command-line `options` string (`-c name=value …`, with
/// spaces escaped), for clients that pass settings that way.
pub fn session_options() -> String {
    SESSION_SETTINGS
        .iter()
        .map(|(name, value)| format!("-c {name}={}", value.replace(' ', "\\ ")))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Sets `session_replication_role = replica` on `client` (no triggers, no
/// foreign key checks or actions) when its role may; whether it did. A role
/// that may not (no superuser, no `SET` privilege on the parameter) is no
/// error.
pub async fn set_replica_role(
    client: &tokio_postgres::Client,
) -> Result<bool, tokio_postgres::Error> {
    match client
        .batch_execute("SET session_replication_role = replica")
        .await
    {
        Ok(()) => Ok(true),
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) => {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn options_escape_spaces() {
        let options = super::session_options();
        assert!(options.contains("-c DateStyle=ISO,\\ MDY"), "{options}");
        assert!(options.starts_with("-c client_encoding=UTF8 "));
    }
}
