//! Problems found in user-written inputs (mappings, catalog, options files),
//! and how they are shown.
//!
//! Every checking stage returns its errors as data: a `thiserror` enum that
//! derives `miette::Diagnostic` with a stable code, a labelled byte span and a
//! help line. A [`Problem`] pairs one such diagnostic with the [`SourceFile`]
//! its span points into. Only the binary renders problems, either as miette's
//! graphical reports or as JSON records for CI and editors.

use std::fmt::Write as _;
use std::sync::Arc;

use miette::{Diagnostic, GraphicalReportHandler, GraphicalTheme, NamedSource, Report, Severity};
use serde::Serialize;

/// An input file held in memory so that diagnostics can quote it.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// The name shown to the user: the path as given on the command line.
    pub name: String,
    /// The whole text of the file.
    pub text: Arc<str>,
}

impl SourceFile {
    pub fn new(name: impl Into<String>, text: impl Into<Arc<str>>) -> Self {
        SourceFile {
            name: name.into(),
            text: text.into(),
        }
    }

    /// The 1-based line and column (in characters) of a byte offset.
    pub fn line_column(&self, offset: usize) -> (usize, usize) {
        let before = &self.text[..offset.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |at| at + 1);
        let column = before[line_start..].chars().count() + 1;
        (line, column)
    }
}

/// One diagnostic, with the file it points into when it points into one.
#[derive(Debug)]
pub struct Problem {
    pub file: Option<SourceFile>,
    pub diagnostic: Box<dyn Diagnostic + Send + Sync + 'static>,
}

impl Problem {
    pub fn new(file: &SourceFile, diagnostic: impl Diagnostic + Send + Sync + 'static) -> Self {
        Problem {
            file: Some(file.clone()),
            diagnostic: Box::new(diagnostic),
        }
    }

    /// A problem that belongs to no file, such as a file that cannot be read.
    pub fn detached(diagnostic: impl Diagnostic + Send + Sync + 'static) -> Self {
        Problem {
            file: None,
            diagnostic: Box::new(diagnostic),
        }
    }

    pub fn is_error(&self) -> bool {
        self.diagnostic.severity().unwrap_or(Severity::Error) == Severity::Error
    }

    /// The problem as a JSON-ready record: file, position of its first label,
    /// stable code, message and help.
    pub fn record(&self) -> ProblemRecord {
        let diagnostic = self.diagnostic.as_ref();
        let label = diagnostic.labels().and_then(|mut labels| labels.next());
        let (line, column) = match (&self.file, &label) {
            (Some(file), Some(label)) => {
                let (line, column) = file.line_column(label.offset());
                (Some(line), Some(column))
            }
            _ => (None, None),
        };
        ProblemRecord {
            file: self.file.as_ref().map(|file| file.name.clone()),
            line,
            column,
            severity: match diagnostic.severity().unwrap_or(Severity::Error) {
                Severity::Advice => "advice",
                Severity::Warning => "warning",
                Severity::Error => "error",
            },
            code: diagnostic.code().map(|code| code.to_string()),
            message: diagnostic.to_string(),
            label: label.and_then(|label| label.label().map(str::to_owned)),
            help: diagnostic.help().map(|help| help.to_string()),
        }
    }
}

/// The serialised form of a [`Problem`] (`--format json`).
#[derive(Debug, Serialize)]
pub struct ProblemRecord {
    pub file: Option<String>,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub severity: &'static str,
    pub code: Option<String>,
    pub message: String,
    pub label: Option<String>,
    pub help: Option<String>,
}

/// Renders problems as miette's graphical reports, one after the other.
///
/// `color` selects ANSI colours and Unicode art; without it the output is
/// plain Unicode, stable enough to be compared in golden tests.
pub fn render(problems: Vec<Problem>, color: bool) -> String {
    let theme = if color {
        GraphicalTheme::unicode()
    } else {
        GraphicalTheme::unicode_nocolor()
    };
    let handler = GraphicalReportHandler::new_themed(theme)
        .with_width(100)
        .with_links(false);
    let mut out = String::new();
    for problem in problems {
        let report = Report::new_boxed(problem.diagnostic);
        let report = match problem.file {
            Some(file) => report.with_source_code(NamedSource::new(file.name, file.text)),
            None => report,
        };
        let diagnostic: &dyn Diagnostic = report.as_ref();
        if handler.render_report(&mut out, diagnostic).is_err() {
            let _ = writeln!(out, "{report}");
        }
        out.push('\n');
    }
    out
}

/// The candidate closest to `word`, when one is close enough to be what the
/// user meant. Case differences alone always count as close.
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let word_lower = word.to_lowercase();
    candidates
        .into_iter()
        .map(|candidate| {
            (
                strsim::jaro_winkler(&word_lower, &candidate.to_lowercase()),
                candidate,
            )
        })
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, candidate)| candidate)
}

/// A help line for a name that matched none of `candidates`: "did you mean"
/// when one is close, else the list of what is allowed when it is short.
pub fn suggest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let candidates: Vec<&str> = candidates.into_iter().collect();
    if let Some(best) = closest(word, candidates.iter().copied()) {
        return Some(format!("did you mean `{best}`?"));
    }
    match candidates.len() {
        0 => None,
        1..=12 => Some(format!("expected one of: {}", quoted_list(&candidates))),
        _ => None,
    }
}

/// `a`, `b`, `c` — names quoted for messages.
pub fn quoted_list(names: &[&str]) -> String {
    names
        .iter()
        .map(|name| format!("`{name}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_suggest(word: &str, candidates: &[&str], expected: Option<&str>) {
        assert_eq!(
            suggest(word, candidates.iter().copied()).as_deref(),
            expected
        );
    }

    #[test]
    fn suggests_close_names_and_lists_short_sets() {
        check_suggest(
            "colums",
            &["columns", "scopes"],
            Some("did you mean `columns`?"),
        );
        check_suggest(
            "session_id",
            &["SESSION_ID", "PAGE_ID"],
            Some("did you mean `SESSION_ID`?"),
        );
        check_suggest(
            "zzz",
            &["flag", "int"],
            Some("expected one of: `flag`, `int`"),
        );
        check_suggest("zzz", &[], None);
    }

    #[test]
    fn line_column_counts_characters() {
        let file = SourceFile::new("f", "ab\nçd: x\n");
        assert_eq!(file.line_column(0), (1, 1));
        assert_eq!(file.line_column(3), (2, 1));
        assert_eq!(file.line_column("ab\nçd".len()), (2, 3));
    }
}
