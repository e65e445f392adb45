//! Table declarations: the serde model of `schemas/tables/*.yaml` and the
//! checks that make a declaration usable (keys name real columns, seeded
//! rows fit). Column types are written as in DDL, in lower case:
//! `varchar(64) not null`.

use std::fmt;
use std::str::FromStr;

use indexmap::IndexMap;
use miette::SourceSpan;
use serde::Deserialize;

use super::CatalogError;

/// What a table is for; it decides which mapping parts may target it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Fact,
    Dimension,
    Control,
    /// Info Mart's DATE_TIME: filled by martmap from the options' time zone.
    Calendar,
    /// A level table of an aggregate file (not declared in the catalog).
    Aggregate,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Fact => "fact",
            Role::Dimension => "dimension",
            Role::Control => "control",
            Role::Calendar => "calendar",
            Role::Aggregate => "aggregate",
        })
    }
}

/// A column's SQL type, portable between SQLite and PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    SmallInt,
    Integer,
    BigInt,
    /// Text of at most this many characters.
    Varchar(usize),
    Text,
    Bytes,
    /// A double-precision floating-point number.
    Double,
}

impl ColumnType {
    pub fn is_integer(self) -> bool {
        matches!(
            self,
            ColumnType::SmallInt | ColumnType::Integer | ColumnType::BigInt
        )
    }

    pub fn is_text(self) -> bool {
        matches!(self, ColumnType::Varchar(_) | ColumnType::Text)
    }

    /// The most characters a value may have; longer strings are cut to fit.
    pub fn max_chars(self) -> Option<usize> {
        match self {
            ColumnType::Varchar(size) => Some(size),
            _ => None,
        }
    }
}

impl fmt::Display for ColumnType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ColumnType::SmallInt => f.write_str("smallint"),
            ColumnType::Integer => f.write_str("integer"),
            ColumnType::BigInt => f.write_str("bigint"),
            ColumnType::Varchar(size) => write!(f, "varchar({size})"),
            ColumnType::Text => f.write_str("text"),
            ColumnType::Bytes => f.write_str("bytes"),
            ColumnType::Double => f.write_str("double"),
        }
    }
}

/// One column: `<type> [not null]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Column {
    pub ty: ColumnType,
    pub nullable: bool,
}

impl FromStr for Column {
    type Err = String;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let spec = spec.trim();
        let (ty, nullable) = match spec.strip_suffix("not null") {
            Some(ty) => (ty.trim_end(), false),
            None => (spec, true),
        };
        let ty = match ty {
            "smallint" => ColumnType::SmallInt,
            "integer" | "int" => ColumnType::Integer,
            "bigint" => ColumnType::BigInt,
            "text" => ColumnType::Text,
            "bytes" => ColumnType::Bytes,
            "double" => ColumnType::Double,
            _ => {
                let size = ty
                    .strip_prefix("varchar(")
                    .and_then(|rest| rest.strip_suffix(')'))
                    .and_then(|size| size.trim().parse::<usize>().ok())
                    .filter(|size| *size > 0)
                    .ok_or_else(|| {
                        format!(
                            "invalid column type `{spec}`: expected smallint, integer, bigint, \
                             double, varchar(N), text or bytes, optionally followed by `not null`"
                        )
                    })?;
                ColumnType::Varchar(size)
            }
        };
        Ok(Column { ty, nullable })
    }
}

impl TryFrom<String> for Column {
    type Error = String;

    fn try_from(spec: String) -> Result<Self, Self::Error> {
        spec.parse()
    }
}

/// The columns that record which batch created and last updated a row.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Audit {
    pub create: Option<String>,
    pub update: Option<String>,
}

/// A seeded cell value (static dimension members).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum SeedValue {
    Int(i64),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TablesFile {
    tables: IndexMap<String, TableConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TableConfig {
    role: Role,
    #[serde(default)]
    description: Option<String>,
    columns: IndexMap<String, Column>,
    primary_key: Vec<String>,
    #[serde(default)]
    surrogate_key: Option<String>,
    #[serde(default)]
    natural_key: Vec<String>,
    #[serde(default)]
    audit: Audit,
    #[serde(default)]
    rows: Vec<IndexMap<String, SeedValue>>,
}

/// A declared table.
#[derive(Debug, Clone)]
pub struct Table {
    pub name: String,
    pub role: Role,
    pub description: Option<String>,
    pub columns: IndexMap<String, Column>,
    pub primary_key: Vec<String>,
    /// The generated integer id of a dimension row.
    pub surrogate_key: Option<String>,
    /// The columns whose values identify a dimension member (unique).
    pub natural_key: Vec<String>,
    pub audit: Audit,
    /// Rows created with the table (static dimension members).
    pub rows: Vec<IndexMap<String, SeedValue>>,
}

impl Table {
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.get(name)
    }

    pub fn column_names(&self) -> impl Iterator<Item = &str> {
        self.columns.keys().map(String::as_str)
    }

    /// Whether the sink fills this column itself (audit keys, surrogate key).
    pub fn is_managed(&self, column: &str) -> bool {
        self.audit.create.as_deref() == Some(column)
            || self.audit.update.as_deref() == Some(column)
            || self.surrogate_key.as_deref() == Some(column)
    }

    /// The values seeded into `column`, in declaration order.
    pub fn seeded(&self, column: &str) -> Vec<&SeedValue> {
        self.rows.iter().filter_map(|row| row.get(column)).collect()
    }

    /// Every inconsistency of the declaration.
    pub(super) fn check(&self) -> Vec<CatalogError> {
        let mut errors = Vec::new();
        let mut invalid = |message: String| {
            errors.push(CatalogError::InvalidTable {
                table: self.name.clone(),
                message,
            })
        };
        let named: Vec<(&str, &str)> = self
            .primary_key
            .iter()
            .map(|c| ("primary_key", c.as_str()))
            .chain(self.natural_key.iter().map(|c| ("natural_key", c.as_str())))
            .chain(
                self.surrogate_key
                    .iter()
                    .map(|c| ("surrogate_key", c.as_str())),
            )
            .chain(
                self.audit
                    .create
                    .iter()
                    .map(|c| ("audit.create", c.as_str())),
            )
            .chain(
                self.audit
                    .update
                    .iter()
                    .map(|c| ("audit.update", c.as_str())),
            )
            .collect();
        for (part, column) in named {
            match self.column(column) {
                None => invalid(format!("{part} names `{column}`, which is not a column")),
                Some(spec)
                    if !matches!(part, "natural_key" | "primary_key") && !spec.ty.is_integer() =>
                {
                    invalid(format!(
                        "{part} column `{column}` must be an integer type, not {}",
                        spec.ty
                    ))
                }
                Some(_) => {}
            }
        }
        if self.primary_key.is_empty() {
            invalid("primary_key must name at least one column".into());
        }
        if self.role == Role::Dimension
            && (self.surrogate_key.is_none() || self.natural_key.is_empty())
        {
            invalid("a dimension needs a surrogate_key and a natural_key".into());
        }
        for (at, row) in self.rows.iter().enumerate() {
            for (column, value) in row {
                let fits = match (self.column(column).map(|c| c.ty), value) {
                    (None, _) => {
                        invalid(format!(
                            "row {} sets `{column}`, which is not a column",
                            at + 1
                        ));
                        continue;
                    }
                    (Some(ty), SeedValue::Int(_)) => ty.is_integer(),
                    (Some(ty), SeedValue::Text(text)) => {
                        ty.is_text() && ty.max_chars().is_none_or(|max| text.chars().count() <= max)
                    }
                };
                if !fits {
                    invalid(format!(
                        "row {} value of `{column}` does not fit its type",
                        at + 1
                    ));
                }
            }
        }
        errors
    }
}

/// Parses one tables file.
pub(super) fn parse_tables(text: &str) -> Result<Vec<Table>, CatalogError> {
    let file: TablesFile = serde_yaml::from_str(text).map_err(|error| CatalogError::Syntax {
        message: error.to_string(),
        span: error.location().map(|at| SourceSpan::from(at.index())),
    })?;
    Ok(file
        .tables
        .into_iter()
        .map(|(name, config)| Table {
            name,
            role: config.role,
            description: config.description,
            columns: config.columns,
            primary_key: config.primary_key,
            surrogate_key: config.surrogate_key,
            natural_key: config.natural_key,
            audit: config.audit,
            rows: config.rows,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_column(spec: &str, expected: Result<(ColumnType, bool), ()>) {
        let parsed = spec
            .parse::<Column>()
            .map(|c| (c.ty, c.nullable))
            .map_err(|_| ());
        assert_eq!(parsed, expected, "{spec}");
    }

    #[test]
    fn parses_column_specs() {
        check_column("varchar(64) not null", Ok((ColumnType::Varchar(64), false)));
        check_column("varchar( 16 )", Ok((ColumnType::Varchar(16), true)));
        check_column("VARCHAR(16)", Err(()));
        check_column("bigint", Ok((ColumnType::BigInt, true)));
        check_column("smallint not null", Ok((ColumnType::SmallInt, false)));
        check_column("varchar(0)", Err(()));
        check_column("float", Err(()));
    }

    #[test]
    fn reports_keys_naming_missing_columns() {
        let tables = parse_tables(
            "tables:\n  T:\n    role: dimension\n    columns: {ID: integer not null, NAME: text}\n    \
             primary_key: [ID]\n    surrogate_key: ID\n    natural_key: [NAM]\n    rows: [{ID: 1, NAME: 2}]\n",
        )
        .unwrap();
        let messages: Vec<String> = tables[0].check().iter().map(|e| e.to_string()).collect();
        assert_eq!(
            messages,
            [
                "table `T`: natural_key names `NAM`, which is not a column",
                "table `T`: row 1 value of `NAME` does not fit its type",
            ]
        );
    }
}
