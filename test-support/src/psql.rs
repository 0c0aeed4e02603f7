//! The named SQL files of `sql/` as statements a client can run: they are
//! written for psql (`-v name=value`, `\if` defaults), and the tests and the
//! benchmark run them without it.

/// The file without its psql commands (lines starting with `\`) and its
/// final `;`.
pub fn file_body(sql: &str) -> String {
    sql.lines()
        .filter(|l| !l.starts_with('\\'))
        .collect::<Vec<_>>()
        .join("\n")
        .trim()
        .trim_end_matches(';')
        .to_owned()
}

/// `vars` with the longest names first, so that replacing them in that
/// order never replaces a name inside another (`:before_id` vs `:id`).
pub fn longest_first<T: Clone>(vars: &[(&'static str, T)]) -> Vec<(&'static str, T)> {
    let mut vars = vars.to_vec();
    vars.sort_by_key(|(name, _)| std::cmp::Reverse(name.len()));
    vars
}

/// The statement as psql runs it: each `:name` replaced by its value,
/// written as SQL (`'text'` quoted by the caller, numbers as they are).
pub fn statement(sql: &str, vars: &[(&'static str, String)]) -> String {
    let mut text = file_body(sql);
    for (name, value) in longest_first(vars) {
        text = text.replace(&format!(":{name}"), &value);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psql_variables_are_replaced_longest_first_and_psql_commands_dropped() {
        let sql = "\\if :{?before_id} \\else \\set before_id 1 \\endif\nSELECT :id, :before_id;\n";
        let got = statement(sql, &[("id", "7".into()), ("before_id", "9".into())]);
        assert_eq!(got, "SELECT 7, 9");
    }
}
