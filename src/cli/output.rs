//! How client verbs print: aligned tables for people, JSON or YAML for scripts.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
    Yaml,
}

/// Prints `value` as JSON or YAML, or calls `table` to render it for people.
pub fn print<T: Serialize>(format: OutputFormat, value: &T, table: impl FnOnce(&T) -> String) -> Result<(), String> {
    let text = match format {
        OutputFormat::Table => table(value),
        OutputFormat::Json => {
            serde_json::to_string_pretty(value).map_err(|e| format!("cannot encode JSON: {e}"))? + "\n"
        }
        OutputFormat::Yaml => serde_yaml_ng::to_string(value).map_err(|e| format!("cannot encode YAML: {e}"))?,
    };
    print!("{text}");
    Ok(())
}

/// Columns padded to their widest cell, separated by three spaces, as crictl prints them.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut text = String::new();
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let cells: Vec<String> = row.iter().zip(&widths).map(|(cell, width)| format!("{cell:<width$}")).collect();
        text.push_str(cells.join("   ").trim_end());
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    #[test]
    fn tables_align_columns() {
        let text = super::table(&["A", "LONGER"], &[vec!["wide cell".into(), "x".into()]]);
        assert_eq!(text, "A           LONGER\nwide cell   x\n");
    }
}
