//! `martmap init-db`: creates the tables of every mapping and the control
//! tables, and seeds static members.

use std::path::PathBuf;

use martmap::catalog::Catalog;
use martmap::sink::{Database, SchemaPlan, SinkError, plan_tables};

use super::{CatalogArgs, Color, DatabaseArgs, Outcome, load_plans};

/// Create or update the tables of every mapping in a directory, the
/// control tables, and the static dimension members, so the database
/// follows the catalog. Running it again is harmless.
///
/// Tables that exist are compared with the catalog, and what is safe is
/// applied in one transaction: new tables, new nullable columns, wider
/// types (a larger integer, a longer varchar, text), a dropped NOT NULL,
/// missing indexes and static members. A change that could lose or break
/// data (a narrower or other type, a column the catalog no longer
/// declares, a new NOT NULL column, NOT NULL on a nullable column, another
/// primary key) is refused before anything changes: exit 1, naming table,
/// column, what differs and what to do. `load` and `run` do the same for
/// the tables they use.
///
/// Example: martmap init-db --database-url postgres://infomart@db/infomart
///
/// The plan as SQL, changing nothing: martmap init-db --dry-run
#[derive(Debug, clap::Args)]
pub struct InitDbArgs {
    /// Directory of mapping files (`*.yaml`).
    #[arg(long, default_value = "mappings", value_name = "DIR")]
    mappings: PathBuf,

    /// Print what would change, as SQL, and change nothing.
    #[arg(long)]
    dry_run: bool,

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
        if args.dry_run {
            let planned = database
                .schema_plan(&catalog, plans.iter().flat_map(plan_tables))
                .await;
            database.close().await;
            return dry_run(planned?);
        }
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

/// Prints the plan: each change in words, refusals, then the SQL that
/// applying it would run (refused plans run nothing).
fn dry_run((plan, sql): (SchemaPlan, Vec<String>)) -> Result<Outcome, Box<dyn std::error::Error>> {
    let changes = plan.describe();
    if changes.is_empty() && plan.refusals.is_empty() {
        println!("-- the database follows the catalog: no change");
    }
    for change in &changes {
        println!("-- {change}");
    }
    if !plan.refusals.is_empty() {
        return Err(Box::new(SinkError::SchemaRefused(plan.refusals)));
    }
    for statement in sql {
        println!("{statement};");
    }
    Ok(Outcome::Success)
}
