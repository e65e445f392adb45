//! martmap loads JSON reporting events from Kafka into a relational star
//! schema, driven by declarative mappings rather than code.
//!
//! What each topic means is data: the catalog (`schemas/`) declares the
//! target tables and the events' JSON Schemas, mapping files
//! (`mappings/*.yaml`) bind event paths to columns and dimension lookups, and
//! an options file binds topics to mappings (`g:topic:<topic>=<MAPPING>`).
//!
//! ```
//! use martmap::{catalog::Catalog, diagnostic::SourceFile, mapping};
//!
//! let catalog = Catalog::load("schemas".as_ref()).expect("the shipped catalog is valid");
//! let text = std::fs::read_to_string("mappings/COBROWSE.yaml").unwrap();
//! let file = SourceFile::new("mappings/COBROWSE.yaml", text);
//! let cobrowse = mapping::load(&file, &catalog).expect("the shipped mapping is valid");
//! assert_eq!(cobrowse.fact, "COBROWSE_FACT");
//! assert_eq!(cobrowse.scopes.last().unwrap().name, "page"); // the grain: one row per page visit
//! ```

pub mod aggregate;
pub mod calendar;
pub mod catalog;
pub mod convert;
pub mod diagnostic;
pub mod dimension;
pub mod mapping;
pub mod metrics;
pub mod options;
pub mod pipeline;
pub mod plan;
pub mod runtime;
pub mod scaffold;
pub mod sink;
pub mod source;
