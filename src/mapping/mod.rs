//! Mapping files: YAML that binds event paths to the columns of a fact table
//! and its dimensions.
//!
//! Stages, one direction: [`raw::read`] turns YAML into a [`RawMapping`]
//! that remembers where everything was written; [`validate()`] resolves it
//! against the [`Catalog`] into a [`Mapping`], or every problem found. This
//! module never touches a database or a broker.

mod compile;
mod error;
mod model;
mod path;
mod raw;
mod validate;
pub mod vocabulary;

use crate::catalog::Catalog;
use crate::diagnostic::{Problem, SourceFile};

pub use compile::compile;
pub use error::MappingError;
pub use model::{
    Binding, Constant, Conversion, Derivation, Dimension, DimensionKind, Mapping, Scope, ScopeId,
    UrlPart, ValueKind,
};
pub use path::{JsonPath, PathSyntaxError};
pub(crate) use raw::Reader;
pub use raw::Sp;
pub use raw::{RawMapping, read};
pub use validate::validate;

/// Reads and validates one mapping file. All problems are returned, in the
/// order they appear in the file.
pub fn load(file: &SourceFile, catalog: &Catalog) -> Result<Mapping, Vec<Problem>> {
    let (raw, mut errors) = read(&file.text);
    match raw.map(|raw| validate(&raw, catalog)) {
        Some(Ok(mapping)) if errors.is_empty() => return Ok(mapping),
        Some(Err(more)) => errors.extend(more),
        Some(Ok(_)) | None => {}
    }
    errors.sort_by_key(first_offset);
    Err(errors
        .into_iter()
        .map(|error| Problem::new(file, error))
        .collect())
}

/// Reads, validates and compiles one mapping file.
pub fn load_plan(file: &SourceFile, catalog: &Catalog) -> Result<crate::plan::Plan, Vec<Problem>> {
    use sha2::{Digest, Sha256};
    let mapping = load(file, catalog)?;
    let hash = format!("{:x}", Sha256::digest(file.text.as_bytes()));
    Ok(compile(&mapping, hash))
}

fn first_offset(error: &MappingError) -> usize {
    use miette::Diagnostic;
    error
        .labels()
        .and_then(|mut labels| labels.next())
        .map_or(0, |label| label.offset())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The codes of the problems `load` reports for `yaml`, against the
    /// shipped catalog.
    fn check(yaml: &str, expected: &[&str]) {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
        let catalog = Catalog::load(&dir).expect("the shipped catalog is valid");
        let codes: Vec<String> = match load(&SourceFile::new("test.yaml", yaml), &catalog) {
            Ok(_) => Vec::new(),
            Err(problems) => problems
                .iter()
                .map(|p| {
                    p.diagnostic
                        .code()
                        .map(|c| c.to_string())
                        .unwrap_or_default()
                })
                .collect(),
        };
        assert_eq!(codes, expected, "{yaml}");
    }

    /// `check` on the shipped co-browse mapping with one text replaced.
    fn check_cobrowse(from: &str, to: &str, expected: &[&str]) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings/COBROWSE.yaml");
        let text = std::fs::read_to_string(path).expect("the shipped mapping");
        assert!(text.contains(from), "{from}");
        check(&text.replacen(from, to, 1), expected);
    }

    const SCOPES: &str = "scopes:
  session: {each: \"$\"}
  segment: {each: \"$.segments[*]\", in: session, outer: true}
  page: {each: \"$.pages[*]\", in: segment, outer: true}
";

    #[test]
    fn one_mistake_gives_one_diagnostic() {
        check("", &["martmap::mapping::missing_key"; 6]);
        check_cobrowse("", "", &[]);
        check_cobrowse(SCOPES, "scopes: {}\n", &["martmap::mapping::empty"]);
        check_cobrowse(SCOPES, "scopes: []\n", &["martmap::mapping::invalid_type"]);
        check_cobrowse(
            "in: segment, outer",
            "in: segmnt, outer",
            &["martmap::mapping::unknown_scope"],
        );
        check_cobrowse(
            "fact: COBROWSE_FACT",
            "fact: COBROWSE_FACTS",
            &["martmap::mapping::unknown_table"],
        );
    }
}
