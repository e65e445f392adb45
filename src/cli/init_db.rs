//! `martmap init-db`: creates the tables of every mapping and the control
//! tables, and seeds static members.

use std::path::PathBuf;

use martmap::catalog::Catalog;
use martmap::sink::{Database, plan_tables};

use super::{CatalogArgs, Color, DatabaseArgs, Outcome, load_plans};

/// Create the tables of every mapping in a directory, the control tables,
/// and the static dimension members. Existing tables are left as they are;
/// running it again is harmless.
///
/// Example: martmap init-db --database-url postgres://infomart@db/infomart
#[derive(Debug, clap::Args)]
pub struct InitDbArgs {
    /// Directory of mapping files (`*.yaml`).
    #[arg(long, default_value = "mappings", value_name = "DIR")]
    mappings: PathBuf,

    #[command(flatten)]
    database: DatabaseArgs,

    #[command(flatten)]
    catalog: CatalogArgs,

    /// Colour in diagnostics.
    #[arg(long, value_enum, default_value_t = Color::Auto)]
    color: Color,
}

pub fn run(args: InitDbArgs) -> Result<Outcome, Box<dyn std::error::Error>> {
    let Some(plans) = load_plans(&args.mappings, &args.catalog, args.color)? else {
        return Ok(Outcome::Invalid);
    };
    let catalog = Catalog::load(&args.catalog.catalog).map_err(|_| "the catalog became invalid")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let database = Database::connect(&args.database.url(), &catalog).await?;
        let created = database
            .create_tables(&catalog, plans.iter().flat_map(plan_tables))
            .await;
        database.close().await;
        let tables = created?;
        let names: Vec<&str> = tables.iter().map(|table| table.name.as_str()).collect();
        println!(
            "{} tables ready for {} mapping(s): {}",
            names.len(),
            plans.len(),
            names.join(", ")
        );
        Ok::<_, Box<dyn std::error::Error>>(Outcome::Success)
    })
}
