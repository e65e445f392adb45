//! How long `validate-mapping` takes on the shipped co-browse mapping: the
//! whole job (catalog load, YAML read, validation), and validation alone
//! against an already loaded catalog. Run: `cargo bench --bench validate`.

use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, criterion_group, criterion_main};
use martmap::catalog::Catalog;
use martmap::diagnostic::SourceFile;
use martmap::mapping;

fn validate(c: &mut Criterion) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("mappings/COBROWSE.yaml")).expect("mapping");
    let file = SourceFile::new("mappings/COBROWSE.yaml", text);

    c.bench_function("validate COBROWSE.yaml with catalog load", |b| {
        b.iter(|| {
            let catalog = Catalog::load(&root.join("schemas")).expect("catalog");
            black_box(mapping::load(&file, &catalog).expect("valid"))
        })
    });

    let catalog = Catalog::load(&root.join("schemas")).expect("catalog");
    c.bench_function("validate COBROWSE.yaml, catalog loaded", |b| {
        b.iter(|| black_box(mapping::load(&file, &catalog).expect("valid")))
    });
}

criterion_group!(benches, validate);
criterion_main!(benches);
