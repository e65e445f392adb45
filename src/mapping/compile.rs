//! Compilation: a validated [`Mapping`] becomes a [`Plan`]. Paths become
//! selectors, constants become cells, column sizes become cut lengths, and
//! every value is assigned a slot in its scope. It cannot fail: validation
//! has resolved every name already.

use super::model::{Binding, Constant, Derivation, Mapping};
use crate::catalog::ColumnType;
use crate::catalog::PathStep;
use crate::plan::coverage::{Read, push_name};
use crate::plan::{Cell, Default, Plan, PlanDimension, PlanScope, Selector, Target, ValuePlan};

/// Compiles a mapping; `content_hash` identifies the mapping file's text in
/// the audit log.
pub fn compile(mapping: &Mapping, content_hash: String) -> Plan {
    let mut scopes: Vec<PlanScope> = mapping
        .scopes
        .iter()
        .map(|scope| PlanScope {
            name: scope.name.clone(),
            each: Selector::compile(scope.each.query()),
            each_text: scope.each.as_str().to_owned(),
            outer: scope.outer,
            values: Vec::new(),
        })
        .collect();
    let mut values: Vec<ValuePlan> = Vec::new();
    let mut add = |binding: &Binding| {
        let index = values.len();
        let slot = scopes[binding.scope].values.len();
        scopes[binding.scope].values.push(index);
        values.push(value_plan(binding, slot));
        index
    };
    let columns = mapping
        .columns
        .iter()
        .map(|binding| (binding.column.clone(), add(binding)))
        .collect();
    let dimensions = mapping
        .dimensions
        .iter()
        .map(|dimension| PlanDimension {
            key_column: dimension.key_column.clone(),
            table: dimension.table.clone(),
            kind: dimension.kind.clone(),
            columns: dimension
                .matches
                .iter()
                .map(|binding| (binding.column.clone(), add(binding)))
                .collect(),
            level: dimension
                .matches
                .iter()
                .map(|binding| binding.scope)
                .max()
                .unwrap_or(0),
        })
        .collect();
    Plan {
        mapping: mapping.name.clone(),
        content_hash,
        fact: mapping.fact.clone(),
        scopes,
        values,
        columns,
        dimensions,
        key: mapping.key.clone(),
        replace_by: mapping.replace_by.clone(),
        reads: reads(mapping),
    }
}

/// Every attribute path the mapping reads, absolute from the event's root:
/// each scope's array, each value's path and each default's.
fn reads(mapping: &Mapping) -> Vec<Read> {
    let mut prefixes: Vec<String> = Vec::with_capacity(mapping.scopes.len());
    let mut reads = Vec::new();
    for scope in &mapping.scopes {
        let parent = scope.parent.map_or("$", |parent| prefixes[parent].as_str());
        let path = absolute(parent, &scope.each.steps());
        if path != parent {
            reads.push(Read {
                path: path.clone(),
                by: format!("scope {}", scope.name),
                subtree: false,
            });
        }
        prefixes.push(path);
    }
    let dimensions = mapping
        .dimensions
        .iter()
        .flat_map(|d| d.matches.iter().map(move |b| (Some(d.table.as_str()), b)));
    let columns = mapping.columns.iter().map(|b| (None, b));
    for (table, binding) in columns.chain(dimensions) {
        let prefix = &prefixes[binding.scope];
        let by = match table {
            Some(table) => format!("{table}.{}", binding.column),
            None => binding.column.clone(),
        };
        let default = match &binding.default {
            Some(Derivation::UrlPart(_, path) | Derivation::Quantified { path, .. }) => Some(path),
            _ => None,
        };
        for (path, by) in binding
            .path
            .iter()
            .map(|path| (path, by.clone()))
            .chain(default.map(|path| (path, format!("{by} (default)"))))
        {
            let path = absolute(prefix, &path.steps());
            reads.push(Read {
                path,
                by,
                subtree: true,
            });
        }
    }
    reads
}

fn value_plan(binding: &Binding, slot: usize) -> ValuePlan {
    ValuePlan {
        column: binding.column.clone(),
        scope: binding.scope,
        slot,
        path: binding
            .path
            .as_ref()
            .map(|path| (Selector::compile(path.query()), path.as_str().to_owned())),
        convert: binding.convert,
        default: binding.default.as_ref().map(|default| match default {
            Derivation::Constant(constant) => Default::Constant(cell(constant)),
            Derivation::Position(scope) => Default::Position(*scope),
            Derivation::Ordinal(scope) => Default::Ordinal(*scope),
            Derivation::UrlPart(part, path) => Default::UrlPart(
                *part,
                Selector::compile(path.query()),
                path.as_str().to_owned(),
            ),
            Derivation::Quantified { all, path, equals } => Default::Quantified {
                all: *all,
                path: Selector::compile(path.query()),
                equals: cell(equals),
            },
        }),
        missing: binding.missing.as_ref().map_or(Cell::Null, cell),
        required: binding.required,
        empty_is_null: binding.empty_is_null,
        target: target(binding.ty),
    }
}

fn cell(constant: &Constant) -> Cell {
    match constant {
        Constant::Int(number) => Cell::Int(*number),
        Constant::Text(text) => Cell::Text(text.as_str().into()),
    }
}

/// What the interpreter checks a column's values against.
fn target(ty: ColumnType) -> Target {
    match ty {
        ColumnType::SmallInt => Target::Integer {
            name: "smallint",
            min: i16::MIN.into(),
            max: i16::MAX.into(),
        },
        ColumnType::Integer => Target::Integer {
            name: "integer",
            min: i32::MIN.into(),
            max: i32::MAX.into(),
        },
        ColumnType::BigInt => Target::Integer {
            name: "bigint",
            min: i64::MIN,
            max: i64::MAX,
        },
        // A number travels as its JSON text, which the database reads.
        ColumnType::Varchar(_) | ColumnType::Text | ColumnType::Double => Target::Text {
            max_chars: ty.max_chars(),
        },
        ColumnType::Bytes => Target::Bytes,
    }
}

/// A path in normal form (see `plan::coverage`) from steps after `prefix`;
/// a step that cannot be followed (recursive descent, say) ends it.
fn absolute(prefix: &str, steps: &[PathStep]) -> String {
    let mut path = prefix.to_owned();
    for step in steps {
        match step {
            PathStep::Property(name) => push_name(&mut path, name),
            PathStep::Item => path.push_str("[*]"),
            PathStep::Unknown => break,
        }
    }
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_paths_are_written_in_one_normal_form() {
        let steps = [
            PathStep::Property("segments".into()),
            PathStep::Item,
            PathStep::Property("page title".into()),
        ];
        assert_eq!(absolute("$", &steps), "$.segments[*]['page title']");
        assert_eq!(absolute("$.a", &[PathStep::Unknown]), "$.a");
    }
}
