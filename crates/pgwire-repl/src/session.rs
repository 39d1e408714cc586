//! Session settings that every pglive connection pins.

/// The settings that change how values are printed or parsed as text. Every
/// session that moves values (replication, COPY, apply) sets exactly these,
/// so nothing depends on a server's, database's or role's defaults.
pub const SESSION_SETTINGS: &[(&str, &str)] = &[
    ("client_encoding", "UTF8"),
    ("DateStyle", "ISO, MDY"),
    ("IntervalStyle", "postgres"),
    ("extra_float_digits", "3"),
    ("bytea_output", "hex"),
    ("TimeZone", "UTC"),
    ("lc_monetary", "C"),
    ("xmloption", "content"),
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

#[cfg(test)]
mod tests {
    #[test]
    fn options_escape_spaces() {
        let options = super::session_options();
        assert!(options.contains("-c DateStyle=ISO,\\ MDY"), "{options}");
        assert!(options.starts_with("-c client_encoding=UTF8 "));
    }
}
