//! Validation: a [`RawMapping`] and the [`Catalog`] in, a [`Mapping`] or
//! every problem found out.
//!
//! Each `check_*` stage resolves one part of the mapping and records what is
//! wrong without stopping, so one run reports all mistakes. A stage that
//! cannot resolve something (an unknown scope, say) leaves it out, and later
//! stages skip what depends on it instead of piling up follow-on errors.

use std::collections::HashMap;

use miette::SourceSpan;

use super::error::MappingError;
use super::model::{
    Binding, Conversion, Derivation, Dimension, DimensionKind, Mapping, Scope, ScopeId, ValueKind,
};
use super::path::JsonPath;
use super::raw::{
    RawBinding, RawConvert, RawDefault, RawDimension, RawDimensionKind, RawMapping, RawScope, Sp,
};
use super::vocabulary::{self, CONVERSIONS};
use crate::catalog::{Catalog, ColumnType, EventSchema, PathStep, Role, SeedValue, Table};
use crate::diagnostic::{closest, quoted_list, suggest};

pub fn validate(raw: &RawMapping, catalog: &Catalog) -> Result<Mapping, Vec<MappingError>> {
    let mut checker = Checker {
        catalog,
        errors: Vec::new(),
    };
    let event = raw
        .event
        .as_ref()
        .and_then(|event| checker.check_event(event));
    let fact = raw
        .fact
        .as_ref()
        .and_then(|fact| checker.check_table(fact, Role::Fact));
    let scopes = checker.check_scopes(&raw.scopes);
    let context = Context { scopes, event };

    let columns: Vec<Binding> = match fact {
        Some(fact) => raw
            .columns
            .iter()
            .filter_map(|binding| checker.check_binding(binding, fact, &context))
            .collect(),
        None => Vec::new(),
    };
    let dimensions: Vec<Dimension> = raw
        .dimensions
        .iter()
        .filter_map(|dimension| checker.check_dimension(dimension, fact, &context))
        .collect();
    if let Some(fact) = fact {
        checker.check_bound_once(raw);
        checker.check_key(raw, fact);
        checker.check_not_null(raw, fact);
    }

    let complete = raw.name.is_some() && event.is_some() && fact.is_some();
    match (checker.errors.is_empty(), complete, raw.key.as_ref()) {
        (true, true, Some(key)) => Ok(Mapping {
            name: raw
                .name
                .as_ref()
                .map(|name| name.value.clone())
                .unwrap_or_default(),
            description: raw.description.as_ref().map(|d| d.value.clone()),
            event: event.map(|e| e.name.clone()).unwrap_or_default(),
            fact: fact.map(|f| f.name.clone()).unwrap_or_default(),
            scopes: context
                .scopes
                .chain
                .into_iter()
                .map(|(scope, _)| scope)
                .collect(),
            key: names(&key.value),
            replace_by: names(&raw.replace_by),
            columns,
            dimensions,
        }),
        _ => Err(checker.errors),
    }
}

fn names(list: &[Sp<String>]) -> Vec<String> {
    list.iter().map(|name| name.value.clone()).collect()
}

struct Checker<'c> {
    catalog: &'c Catalog,
    errors: Vec<MappingError>,
}

/// What the column checks need from the earlier stages.
struct Context<'c> {
    scopes: Scopes,
    event: Option<&'c EventSchema>,
}

/// The resolved scope chain, root first.
#[derive(Default)]
struct Scopes {
    /// Each scope with its path from the event root, as schema steps.
    chain: Vec<(Scope, Vec<PathStep>)>,
    ids: HashMap<String, ScopeId>,
    /// Names declared but left out of the chain (broken); not reported again.
    broken: Vec<String>,
}

impl Scopes {
    fn is_ancestor_or_self(&self, ancestor: ScopeId, mut scope: ScopeId) -> bool {
        loop {
            if scope == ancestor {
                return true;
            }
            match self.chain[scope].0.parent {
                Some(parent) => scope = parent,
                None => return false,
            }
        }
    }
}

impl<'c> Checker<'c> {
    fn check_event(&mut self, event: &Sp<String>) -> Option<&'c EventSchema> {
        let found = self.catalog.events.get(event.as_str());
        if found.is_none() {
            self.errors.push(MappingError::UnknownEvent {
                name: event.value.clone(),
                span: event.span,
                help: suggest(
                    event.as_str(),
                    self.catalog.events.keys().map(String::as_str),
                ),
            });
        }
        found
    }

    fn check_table(&mut self, name: &Sp<String>, role: Role) -> Option<&'c Table> {
        let Some(table) = self.catalog.table(name.as_str()) else {
            let candidates = self
                .catalog
                .tables
                .values()
                .filter(|t| t.role == role)
                .map(|t| t.name.as_str());
            self.errors.push(MappingError::UnknownTable {
                name: name.value.clone(),
                span: name.span,
                help: suggest(name.as_str(), candidates),
            });
            return None;
        };
        if table.role != role {
            self.errors.push(MappingError::TableRole {
                table: table.name.clone(),
                role: table.role.to_string(),
                expected: if role == Role::Fact {
                    "fact"
                } else {
                    "dimension"
                },
                span: name.span,
            });
            return None;
        }
        Some(table)
    }

    /// Orders the scopes into one chain from the root to the grain.
    fn check_scopes(&mut self, raw: &[RawScope]) -> Scopes {
        let mut scopes = Scopes::default();
        if raw.is_empty() {
            return scopes; // missing, mistyped or empty: reported by the reader
        }
        let index: HashMap<&str, usize> = raw
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.as_str(), i))
            .collect();
        let names: Vec<&str> = raw.iter().map(|s| s.name.as_str()).collect();
        let mut parent_of: Vec<Option<usize>> = vec![None; raw.len()];
        let mut usable = vec![true; raw.len()];
        let mut paths: Vec<Option<JsonPath>> = Vec::with_capacity(raw.len());
        for (at, scope) in raw.iter().enumerate() {
            paths.push(
                scope
                    .each
                    .as_ref()
                    .and_then(|each| self.check_path(each, false)),
            );
            usable[at] &= paths[at].is_some();
            if let Some(parent) = &scope.parent {
                match index.get(parent.as_str()) {
                    Some(&p) => parent_of[at] = Some(p),
                    None => {
                        usable[at] = false;
                        self.errors.push(MappingError::UnknownScope {
                            name: parent.value.clone(),
                            span: parent.span,
                            help: suggest(
                                parent.as_str(),
                                names.iter().copied().filter(|n| *n != scope.name.as_str()),
                            ),
                        });
                    }
                }
            }
        }
        // Cycles: walking up from a scope comes back to it.
        for start in 0..raw.len() {
            let mut seen = vec![start];
            let mut at = start;
            while let Some(parent) = parent_of[at] {
                if parent == start {
                    let first = *seen.iter().min().unwrap_or(&start);
                    if first == start {
                        let cycle: Vec<&str> =
                            seen.iter().chain([&start]).map(|&i| names[i]).collect();
                        let span = raw[start]
                            .parent
                            .as_ref()
                            .map_or(raw[start].name.span, |p| p.span);
                        self.errors.push(MappingError::ScopeCycle {
                            name: names[start].to_owned(),
                            cycle: cycle.join(" in "),
                            span,
                        });
                    }
                    seen.iter().for_each(|&i| usable[i] = false);
                    break;
                }
                if seen.contains(&parent) {
                    break; // a cycle above this scope, reported from its own members
                }
                seen.push(parent);
                at = parent;
            }
        }
        let roots: Vec<usize> = (0..raw.len())
            .filter(|&i| raw[i].parent.is_none())
            .collect();
        match roots.as_slice() {
            [] => self.errors.push(MappingError::ScopeShape {
                problem: "no root scope: every scope is `in` another".into(),
                span: raw[0].name.span,
            }),
            [_, extra @ ..] => {
                for &second in extra {
                    self.errors.push(MappingError::ScopeShape {
                        problem: format!(
                            "scope `{}` is a second root; `{}` is already the root",
                            names[second], names[roots[0]]
                        ),
                        span: raw[second].name.span,
                    });
                }
            }
        }
        // Walk the chain from the first root; a second child is a branch.
        let mut current = roots.first().copied();
        let mut parent_id: Option<ScopeId> = None;
        while let Some(at) = current {
            if !usable[at] {
                break;
            }
            let (Some(each), false) = (paths[at].clone(), scopes.ids.contains_key(names[at]))
            else {
                break;
            };
            let mut steps = parent_id
                .map(|p| scopes.chain[p].1.clone())
                .unwrap_or_default();
            steps.extend(each.steps());
            let scope = Scope {
                name: names[at].to_owned(),
                each,
                parent: parent_id,
                outer: raw[at].outer,
            };
            let id = scopes.chain.len();
            scopes.ids.insert(scope.name.clone(), id);
            scopes.chain.push((scope, steps));
            parent_id = Some(id);
            let children: Vec<usize> = (0..raw.len())
                .filter(|&c| parent_of[c] == Some(at))
                .collect();
            if let [_, extra @ ..] = children.as_slice() {
                for &branch in extra {
                    self.errors.push(MappingError::ScopeShape {
                        problem: format!(
                            "scopes `{}` and `{}` are both in `{}`: the grain must be a single chain",
                            names[children[0]], names[branch], names[at]
                        ),
                        span: raw[branch].parent.as_ref().map_or(raw[branch].name.span, |p| p.span),
                    });
                }
            }
            current = children.first().copied();
        }
        scopes.broken = names
            .iter()
            .filter(|n| !scopes.ids.contains_key(**n))
            .map(|n| (*n).to_owned())
            .collect();
        scopes
    }

    fn check_path(&mut self, path: &Sp<String>, singular: bool) -> Option<JsonPath> {
        match JsonPath::parse(path.as_str()) {
            Ok(parsed) if singular && !parsed.is_singular() => {
                self.errors.push(MappingError::PathNotSingular {
                    path: path.value.clone(),
                    span: path.span,
                });
                None
            }
            Ok(parsed) => Some(parsed),
            Err(error) => {
                let at = error.offset.min(path.value.len());
                let width = path.value[at..].chars().next().map_or(0, char::len_utf8);
                self.errors.push(MappingError::JsonPathSyntax {
                    path: path.value.clone(),
                    reason: error.reason,
                    span: (path.span.offset() + at, width).into(),
                });
                None
            }
        }
    }

    /// Resolves a scope name; `None` when it is unknown (reported) or broken
    /// (already reported by `check_scopes`).
    fn check_scope_name(&mut self, name: &Sp<String>, scopes: &Scopes) -> Option<ScopeId> {
        if let Some(&id) = scopes.ids.get(name.as_str()) {
            return Some(id);
        }
        if scopes.ids.is_empty() {
            return None; // no usable scope at all: the scopes section is reported
        }
        if !scopes.broken.iter().any(|broken| broken == name.as_str()) {
            let known = scopes
                .ids
                .keys()
                .map(String::as_str)
                .chain(scopes.broken.iter().map(String::as_str));
            self.errors.push(MappingError::UnknownScope {
                name: name.value.clone(),
                span: name.span,
                help: suggest(name.as_str(), known),
            });
        }
        None
    }

    /// Checks that `path`, read in `scope`, can exist in the event.
    fn check_event_path(
        &mut self,
        context: &Context,
        scope: ScopeId,
        path: &JsonPath,
        at: &Sp<String>,
    ) {
        let Some(event) = context.event else { return };
        let mut steps = context.scopes.chain[scope].1.clone();
        steps.extend(path.steps());
        if let Err(mismatch) = event.check_path(&steps) {
            let help = mismatch
                .name
                .as_deref()
                .and_then(|name| closest(name, mismatch.candidates.iter().map(String::as_str)))
                .map(|best| format!("did you mean `{best}`?"))
                .or_else(|| {
                    (!mismatch.candidates.is_empty()).then(|| {
                        let declared: Vec<&str> =
                            mismatch.candidates.iter().map(String::as_str).collect();
                        format!("`{}` declares {}", mismatch.parent, quoted_list(&declared))
                    })
                });
            self.errors.push(MappingError::PathNotInEvent {
                path: path.to_string(),
                event: event.name.clone(),
                reason: mismatch.reason,
                span: at.span,
                help,
            });
        }
    }

    /// Resolves one column binding against its table and the scopes.
    fn check_binding(
        &mut self,
        raw: &RawBinding,
        table: &Table,
        context: &Context,
    ) -> Option<Binding> {
        let Some(column) = table.column(raw.column.as_str()) else {
            self.errors.push(MappingError::UnknownColumn {
                column: raw.column.value.clone(),
                table: table.name.clone(),
                span: raw.column.span,
                help: suggest(raw.column.as_str(), table.column_names()),
            });
            return None;
        };
        let scopes = &context.scopes;
        let scope = match &raw.from {
            Some(from) => self.check_scope_name(from, scopes),
            None if scopes.chain.is_empty() => None,
            None => Some(0),
        };
        let path = raw
            .path
            .as_ref()
            .and_then(|path| self.check_path(path, true));
        if let (Some(scope), Some(parsed), Some(at)) = (scope, &path, &raw.path) {
            self.check_event_path(context, scope, parsed, at);
        }
        let kind = ValueKind::of(column.ty);
        let convert = match &raw.convert {
            Some(convert) => self.check_conversion(convert, raw, column.ty),
            None => Some(match kind {
                ValueKind::Integer => Conversion::Int,
                ValueKind::Number => Conversion::Number,
                ValueKind::Text => Conversion::String,
            }),
        };
        let default = match (&raw.default, scope) {
            (Some(default), Some(scope)) => {
                self.check_default(default, raw, column.ty, scope, context)
            }
            _ => None,
        };
        if let Some(missing) = &raw.missing {
            self.check_kind(
                format!("`missing: {}`", missing.value),
                missing.value.kind(),
                raw,
                column.ty,
                missing.span,
            );
        }
        let resolved = scope.zip(convert)?;
        if raw.path.is_some() && path.is_none() || raw.default.is_some() && default.is_none() {
            return None;
        }
        Some(Binding {
            column: raw.column.value.clone(),
            ty: column.ty,
            scope: resolved.0,
            path,
            convert: resolved.1,
            default,
            missing: raw.missing.as_ref().map(|m| m.value.clone()),
            required: raw.required,
            empty_is_null: raw.empty_is_null,
        })
    }

    fn check_conversion(
        &mut self,
        raw: &RawConvert,
        binding: &RawBinding,
        ty: ColumnType,
    ) -> Option<Conversion> {
        let conversion = match (raw.name.as_str(), &raw.argument) {
            ("string", None) => Conversion::String,
            ("int", None) => Conversion::Int,
            ("number", None) => Conversion::Number,
            ("flag", None) => Conversion::Flag,
            ("epoch_seconds", None) => Conversion::EpochSeconds,
            ("date_time_key", Some(interval)) => match u32::try_from(interval.value) {
                Ok(interval) if interval > 0 => Conversion::DateTimeKey { interval },
                _ => {
                    self.errors.push(MappingError::InvalidType {
                        key: "date_time_key".into(),
                        expected: "a positive number of seconds",
                        found: format!("`{}`", interval.value),
                        span: interval.span,
                    });
                    return None;
                }
            },
            ("date_time_key", None) => {
                self.errors.push(MappingError::InvalidType {
                    key: "convert".into(),
                    expected: "`{date_time_key: SECONDS}` with the interval length",
                    found: "`date_time_key`".into(),
                    span: raw.name.span,
                });
                return None;
            }
            (name, Some(_)) if vocabulary::find(CONVERSIONS, name).is_some() => {
                self.errors.push(MappingError::InvalidType {
                    key: "convert".into(),
                    expected: "a conversion name without argument",
                    found: format!("`{{{name}: ...}}`"),
                    span: raw.name.span,
                });
                return None;
            }
            (name, _) => {
                self.errors.push(MappingError::UnknownConversion {
                    name: name.to_owned(),
                    span: raw.name.span,
                    help: suggest(name, vocabulary::names(CONVERSIONS)),
                });
                return None;
            }
        };
        let kind = ValueKind::of(ty);
        let yields = vocabulary::conversion(conversion).yields;
        if yields != kind {
            let fitting: Vec<&str> = CONVERSIONS
                .iter()
                .filter(|word| word.yields == kind)
                .map(|word| word.name)
                .collect();
            self.errors.push(MappingError::ConversionType {
                conversion: conversion.name(),
                yields: yields.describe(),
                column: binding.column.value.clone(),
                column_type: ty.to_string(),
                span: raw.name.span,
                help: format!("a {ty} column takes {}", quoted_list(&fitting)),
            });
            return None;
        }
        Some(conversion)
    }

    fn check_default(
        &mut self,
        raw: &Sp<RawDefault>,
        binding: &RawBinding,
        ty: ColumnType,
        scope: ScopeId,
        context: &Context,
    ) -> Option<Derivation> {
        let scopes = &context.scopes;
        let derivation = match &raw.value {
            RawDefault::Constant(constant) => Derivation::Constant(constant.clone()),
            RawDefault::Position(name) | RawDefault::Ordinal(name) => {
                let target = self.check_scope_name(name, scopes)?;
                if !scopes.is_ancestor_or_self(target, scope) {
                    self.errors.push(MappingError::ScopeNotInReach {
                        scope: name.value.clone(),
                        from: scopes.chain[scope].0.name.clone(),
                        span: name.span,
                    });
                    return None;
                }
                match raw.value {
                    RawDefault::Position(_) => Derivation::Position(target),
                    _ => Derivation::Ordinal(target),
                }
            }
            RawDefault::UrlPart(part, path) => {
                let parsed = self.check_path(path, true)?;
                self.check_event_path(context, scope, &parsed, path);
                Derivation::UrlPart(*part, parsed)
            }
            RawDefault::Quantified { all, path, equals } => {
                let parsed = self.check_path(path, false)?;
                self.check_event_path(context, scope, &parsed, path);
                Derivation::Quantified {
                    all: *all,
                    path: parsed,
                    equals: equals.value.clone(),
                }
            }
        };
        let what = match &raw.value {
            RawDefault::Constant(constant) => format!("default `{constant}`"),
            derived => format!("default `{}`", derived.name()),
        };
        self.check_kind(what, derivation.yields(), binding, ty, raw.span)
            .then_some(derivation)
    }

    fn check_kind(
        &mut self,
        what: String,
        yields: ValueKind,
        binding: &RawBinding,
        ty: ColumnType,
        span: SourceSpan,
    ) -> bool {
        // An integer is a number too.
        let column = ValueKind::of(ty);
        let fits = yields == column || (yields, column) == (ValueKind::Integer, ValueKind::Number);
        if !fits {
            self.errors.push(MappingError::ValueType {
                what,
                yields: yields.describe(),
                column: binding.column.value.clone(),
                column_type: ty.to_string(),
                span,
            });
        }
        fits
    }

    fn check_dimension(
        &mut self,
        raw: &RawDimension,
        fact: Option<&Table>,
        context: &Context,
    ) -> Option<Dimension> {
        if let Some(fact) = fact
            && fact.column(raw.column.as_str()).is_none()
        {
            self.errors.push(MappingError::DimensionKeyMissing {
                column: raw.column.value.clone(),
                fact: fact.name.clone(),
                span: raw.column.span,
                help: suggest(raw.column.as_str(), fact.column_names()),
            });
        }
        let table = raw
            .table
            .as_ref()
            .and_then(|table| self.check_table(table, Role::Dimension))?;
        let mut matches: Vec<Binding> = raw
            .matches
            .iter()
            .filter_map(|binding| self.check_binding(binding, table, context))
            .collect();
        // Members are identified in the table's natural key order.
        matches.sort_by_key(|binding| {
            let position = table.natural_key.iter().position(|c| *c == binding.column);
            position.unwrap_or(usize::MAX)
        });
        for column in &table.natural_key {
            if !raw
                .matches
                .iter()
                .any(|binding| binding.column.as_str() == column)
            {
                self.errors.push(MappingError::UnboundNaturalKey {
                    column: column.clone(),
                    table: table.name.clone(),
                    span: raw.column.span,
                });
            }
        }
        let kind = match raw.kind.as_ref()? {
            RawDimensionKind::Static { members, otherwise } => {
                self.check_static(table, members, otherwise)?
            }
            RawDimensionKind::GetOrCreate { absent } => {
                // The member of an absent attribute goes into every natural
                // key column: an integer column needs an integer.
                let integer = table
                    .natural_key
                    .iter()
                    .any(|c| table.column(c).is_some_and(|c| c.ty.is_integer()));
                if integer && absent.value.parse::<i64>().is_err() {
                    self.errors.push(MappingError::InvalidType {
                        key: "absent".into(),
                        expected: "an integer, as the dimension's natural key has integer columns",
                        found: format!("`{}`", absent.value),
                        span: absent.span,
                    });
                    return None;
                }
                DimensionKind::GetOrCreate {
                    absent: absent.value.clone(),
                }
            }
        };
        (matches.len() == raw.matches.len()).then(|| Dimension {
            key_column: raw.column.value.clone(),
            table: table.name.clone(),
            kind,
            matches,
        })
    }

    fn check_static(
        &mut self,
        table: &Table,
        members: &Sp<Vec<Sp<String>>>,
        otherwise: &Sp<String>,
    ) -> Option<DimensionKind> {
        if members.value.is_empty() {
            self.errors.push(MappingError::Empty {
                key: "members",
                span: members.span,
            });
            return None;
        }
        let listed: Vec<&str> = members.value.iter().map(Sp::as_str).collect();
        let mut valid = true;
        if !listed.contains(&otherwise.as_str()) {
            valid = false;
            self.errors.push(MappingError::StaticOtherwise {
                value: otherwise.value.clone(),
                span: otherwise.span,
                help: match closest(otherwise.as_str(), listed.iter().copied()) {
                    Some(best) => format!("did you mean `{best}`?"),
                    None => format!("add it to members, or pick one of {}", quoted_list(&listed)),
                },
            });
        }
        // Static members must exist: they are the rows seeded with the schema.
        if let [column] = table.natural_key.as_slice() {
            let seeded: Vec<&str> = table
                .seeded(column)
                .into_iter()
                .filter_map(|value| match value {
                    SeedValue::Text(text) => Some(text.as_str()),
                    SeedValue::Int(_) => None,
                })
                .collect();
            for member in &members.value {
                if !seeded.contains(&member.as_str()) {
                    valid = false;
                    self.errors.push(MappingError::UnknownMember {
                        member: member.value.clone(),
                        table: table.name.clone(),
                        column: column.clone(),
                        span: member.span,
                        help: format!(
                            "{} seeds {}; add a row under `rows:` in the catalog",
                            table.name,
                            quoted_list(&seeded)
                        ),
                    });
                }
            }
        }
        valid.then(|| DimensionKind::Static {
            members: listed.iter().map(|m| (*m).to_owned()).collect(),
            otherwise: otherwise.value.clone(),
        })
    }

    /// A fact column takes its value from one place only.
    fn check_bound_once(&mut self, raw: &RawMapping) {
        let mut first: HashMap<&str, SourceSpan> = HashMap::new();
        let bound = raw
            .columns
            .iter()
            .map(|b| &b.column)
            .chain(raw.dimensions.iter().map(|d| &d.column));
        for column in bound {
            if let Some(&earlier) = first.get(column.as_str()) {
                self.errors.push(MappingError::DuplicateBinding {
                    column: column.value.clone(),
                    span: column.span,
                    first: earlier,
                });
            } else {
                first.insert(column.as_str(), column.span);
            }
        }
    }

    fn check_key(&mut self, raw: &RawMapping, fact: &Table) {
        let Some(key) = &raw.key else { return };
        if key.value.is_empty() {
            self.errors.push(MappingError::Empty {
                key: "key",
                span: key.span,
            });
        }
        for column in &key.value {
            if fact.column(column.as_str()).is_none() {
                self.errors.push(MappingError::UnknownColumn {
                    column: column.value.clone(),
                    table: fact.name.clone(),
                    span: column.span,
                    help: suggest(column.as_str(), fact.column_names()),
                });
            } else if !is_bound(raw, column.as_str()) {
                self.errors.push(MappingError::UnboundKey {
                    column: column.value.clone(),
                    span: column.span,
                });
            }
        }
        for column in &raw.replace_by {
            if !key.value.iter().any(|k| k.value == column.value) {
                self.errors.push(MappingError::ReplaceBy {
                    column: column.value.clone(),
                    span: column.span,
                });
            } else if raw
                .dimensions
                .iter()
                .any(|d| d.column.value == column.value)
            {
                // The writers read identities from mapped values.
                self.errors.push(MappingError::ReplaceByDimension {
                    column: column.value.clone(),
                    span: column.span,
                });
            }
        }
    }

    fn check_not_null(&mut self, raw: &RawMapping, fact: &Table) {
        let Some(at) = &raw.fact else { return };
        for (name, column) in &fact.columns {
            if column.nullable || fact.is_managed(name) || is_bound(raw, name) {
                continue;
            }
            let in_key = raw
                .key
                .as_ref()
                .is_some_and(|key| key.value.iter().any(|k| k.as_str() == name));
            if in_key {
                continue; // reported as an unbound key column
            }
            self.errors.push(MappingError::UnboundNotNull {
                column: name.clone(),
                table: fact.name.clone(),
                span: at.span,
                help: format!("bind it: `columns: {{{name}: {{from: ..., path: ...}}}}`, or as a dimension key"),
            });
        }
    }
}

/// Whether the mapping gives `column` a value, from `columns:` or as a
/// dimension's key column (whether or not that binding resolved).
fn is_bound(raw: &RawMapping, column: &str) -> bool {
    raw.columns.iter().any(|b| b.column.as_str() == column)
        || raw.dimensions.iter().any(|d| d.column.as_str() == column)
}
