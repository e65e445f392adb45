//! Mapping files: YAML that binds event paths to the columns of a fact table
//! and its dimensions.
//!
//! Stages, one direction: [`raw::read`] turns YAML into a [`RawMapping`]
//! that remembers where everything was written; [`validate()`] resolves it
//! against the [`Catalog`] into a [`Mapping`], or every problem found. This
//! module never touches a database or a broker.

mod error;
mod model;
mod path;
mod raw;
mod validate;

use crate::catalog::Catalog;
use crate::diagnostic::{Problem, SourceFile};

pub use error::MappingError;
pub use model::{
    Binding, Constant, Conversion, Derivation, Dimension, DimensionKind, Mapping, Scope, ScopeId,
    UrlPart, ValueKind,
};
pub use path::{JsonPath, PathSyntaxError};
pub use raw::{RawMapping, read};
pub use validate::{CONVERSIONS, validate};

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

fn first_offset(error: &MappingError) -> usize {
    use miette::Diagnostic;
    error
        .labels()
        .and_then(|mut labels| labels.next())
        .map_or(0, |label| label.offset())
}
