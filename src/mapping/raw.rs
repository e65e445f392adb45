//! The raw mapping: what the author wrote, with the byte span of every key
//! and value, read from marked-yaml's node tree.
//!
//! serde stops at the first error, but `validate-mapping` must report every
//! problem at its exact place. So the raw model is read by a small reader
//! that records each structural problem (unknown key with a suggestion,
//! wrong type, missing key) and carries on with the rest of the file. Names
//! stay unresolved strings here; `validate` resolves them.

use marked_yaml::types::MarkedScalarNode;
use marked_yaml::{LoadError, LoaderOptions, Marker, Node};
use miette::SourceSpan;

use super::error::MappingError;
use super::model::{Constant, UrlPart};
use super::vocabulary::{self, DERIVATIONS};
use crate::diagnostic::suggest;

/// A value with the byte span it was written at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sp<T> {
    pub value: T,
    pub span: SourceSpan,
}

impl Sp<String> {
    pub fn as_str(&self) -> &str {
        &self.value
    }
}

#[derive(Debug, Clone)]
pub struct RawMapping {
    /// Where the document starts, for keys missing at the top level.
    pub span: SourceSpan,
    pub name: Option<Sp<String>>,
    pub description: Option<Sp<String>>,
    pub event: Option<Sp<String>>,
    pub fact: Option<Sp<String>>,
    pub scopes: Vec<RawScope>,
    pub key: Option<Sp<Vec<Sp<String>>>>,
    pub replace_by: Vec<Sp<String>>,
    pub columns: Vec<RawBinding>,
    pub dimensions: Vec<RawDimension>,
}

#[derive(Debug, Clone)]
pub struct RawScope {
    pub name: Sp<String>,
    pub each: Option<Sp<String>>,
    pub parent: Option<Sp<String>>,
    pub outer: bool,
}

#[derive(Debug, Clone)]
pub struct RawBinding {
    pub column: Sp<String>,
    pub from: Option<Sp<String>>,
    pub path: Option<Sp<String>>,
    pub convert: Option<RawConvert>,
    pub default: Option<Sp<RawDefault>>,
    pub missing: Option<Sp<Constant>>,
    pub required: bool,
    pub empty_is_null: bool,
}

/// `convert: name` or `convert: {name: argument}`.
#[derive(Debug, Clone)]
pub struct RawConvert {
    pub name: Sp<String>,
    pub argument: Option<Sp<i64>>,
}

#[derive(Debug, Clone)]
pub enum RawDefault {
    Constant(Constant),
    Position(Sp<String>),
    Ordinal(Sp<String>),
    UrlPart(UrlPart, Sp<String>),
    Quantified {
        all: bool,
        path: Sp<String>,
        equals: Sp<Constant>,
    },
}

impl RawDefault {
    /// The derivation's key as written (`position`, `url_host`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            RawDefault::Constant(_) => "constant",
            RawDefault::Position(_) => "position",
            RawDefault::Ordinal(_) => "ordinal",
            RawDefault::UrlPart(UrlPart::Host, _) => "url_host",
            RawDefault::UrlPart(UrlPart::Path, _) => "url_path",
            RawDefault::UrlPart(UrlPart::Query, _) => "url_query",
            RawDefault::Quantified { all: false, .. } => "any",
            RawDefault::Quantified { all: true, .. } => "all",
        }
    }
}

#[derive(Debug, Clone)]
pub struct RawDimension {
    pub column: Sp<String>,
    pub table: Option<Sp<String>>,
    pub kind: Option<RawDimensionKind>,
    pub matches: Vec<RawBinding>,
}

#[derive(Debug, Clone)]
pub enum RawDimensionKind {
    Static {
        members: Sp<Vec<Sp<String>>>,
        otherwise: Sp<String>,
    },
    GetOrCreate {
        absent: Sp<String>,
    },
}

const MAPPING_KEYS: &[&str] = &[
    "name",
    "description",
    "event",
    "fact",
    "scopes",
    "key",
    "replace_by",
    "columns",
    "dimensions",
];
const SCOPE_KEYS: &[&str] = &["each", "in", "outer"];
const BINDING_KEYS: &[&str] = &[
    "from",
    "path",
    "convert",
    "default",
    "missing",
    "required",
    "empty_is_null",
];
const DIMENSION_KEYS: &[&str] = &["table", "static", "get_or_create", "match"];
const STATIC_KEYS: &[&str] = &["members", "otherwise"];
const GET_OR_CREATE_KEYS: &[&str] = &["absent"];

/// Reads a mapping file. The raw mapping is returned whenever the YAML
/// parses, together with every structural problem found.
pub fn read(text: &str) -> (Option<RawMapping>, Vec<MappingError>) {
    let (root, mut reader) = Reader::document(text);
    let mapping = root.map(|root| reader.mapping(&root));
    (mapping, reader.errors)
}

pub(crate) struct Reader<'t> {
    text: &'t str,
    pub(crate) errors: Vec<MappingError>,
}

/// The entries of one YAML mapping, keys already checked.
pub(crate) struct Fields<'n> {
    entries: Vec<(&'n MarkedScalarNode, &'n Node)>,
    owner: SourceSpan,
    context: String,
}

impl<'n> Fields<'n> {
    pub(crate) fn get(&self, key: &str) -> Option<&'n Node> {
        self.entries
            .iter()
            .find(|(k, _)| k.as_str() == key)
            .map(|(_, v)| *v)
    }
}

impl<'t> Reader<'t> {
    /// Parses a YAML document whose top level is a mapping; the reader
    /// collects the problems of what is read from it. Shared by every
    /// YAML file martmap reads with positions (mappings, aggregates).
    pub(crate) fn document(text: &'t str) -> (Option<Node>, Reader<'t>) {
        let mut reader = Reader {
            text,
            errors: Vec::new(),
        };
        let options = LoaderOptions::default()
            .error_on_duplicate_keys(true)
            .toplevel_mapping();
        match marked_yaml::parse_yaml_with_options(0, text, options) {
            Ok(root) => (Some(root), reader),
            Err(error) => {
                let error = reader.load_error(error);
                reader.errors.push(error);
                (None, reader)
            }
        }
    }

    fn mapping(&mut self, root: &Node) -> RawMapping {
        let span = self.line_span(root);
        let mut raw = RawMapping {
            span,
            name: None,
            description: None,
            event: None,
            fact: None,
            scopes: Vec::new(),
            key: None,
            replace_by: Vec::new(),
            columns: Vec::new(),
            dimensions: Vec::new(),
        };
        let Some(top) = self.fields(root, "mapping", span, "the mapping", MAPPING_KEYS) else {
            return raw;
        };
        raw.name = self
            .required(
                &top,
                "name",
                "name the mapping, as `g:topic:<topic>=<NAME>` refers to it",
            )
            .and_then(|node| self.string("name", node));
        raw.description = top
            .get("description")
            .and_then(|node| self.string("description", node));
        raw.event = self
            .required(&top, "event", "name the event schema, e.g. `event: cobrowse-session` for schemas/events/cobrowse-session.schema.json")
            .and_then(|node| self.string("event", node));
        raw.fact = self
            .required(&top, "fact", "name the fact table the rows go to")
            .and_then(|node| self.string("fact", node));
        if let Some(node) = self.required(
            &top,
            "scopes",
            "declare at least the root scope: `scopes: {event: {each: \"$\"}}`",
        ) {
            raw.scopes = self.entries(node, "scopes", |reader, name, node| {
                reader.scope(name, node)
            });
            if node.as_mapping().is_some_and(|map| map.is_empty()) {
                self.errors.push(MappingError::Empty {
                    key: "scopes",
                    span: self.line_span(node),
                });
            }
        }
        raw.key = self
            .required(
                &top,
                "key",
                "list the fact's natural key columns: `key: [ID, ...]`",
            )
            .and_then(|node| self.strings("key", node));
        if let Some(node) = top.get("replace_by") {
            raw.replace_by = self
                .strings("replace_by", node)
                .map(|list| list.value)
                .unwrap_or_default();
        }
        if let Some(node) = self.required(
            &top,
            "columns",
            "bind the fact's columns: `columns: {COLUMN: {from: scope, path: \"$.attr\"}}`",
        ) {
            raw.columns = self.entries(node, "columns", |reader, column, node| {
                reader.binding(column, node, "column")
            });
        }
        if let Some(node) = top.get("dimensions") {
            raw.dimensions = self.entries(node, "dimensions", |reader, column, node| {
                reader.dimension(column, node)
            });
        }
        raw
    }

    fn scope(&mut self, name: Sp<String>, node: &Node) -> Option<RawScope> {
        let context = format!("scope `{}`", name.value);
        let fields = self.fields(node, &name.value, name.span, &context, SCOPE_KEYS)?;
        let each = self
            .required(&fields, "each", "give the JSONPath this scope explodes, relative to its parent: `each: \"$.items[*]\"`")
            .and_then(|node| self.string("each", node));
        let parent = fields.get("in").and_then(|node| self.string("in", node));
        let outer = fields
            .get("outer")
            .and_then(|node| self.flag("outer", node))
            .unwrap_or(false);
        Some(RawScope {
            name,
            each,
            parent,
            outer,
        })
    }

    fn binding(&mut self, column: Sp<String>, node: &Node, what: &str) -> Option<RawBinding> {
        let context = format!("{what} `{}`", column.value);
        let fields = self.fields(node, &column.value, column.span, &context, BINDING_KEYS)?;
        let from = fields
            .get("from")
            .and_then(|node| self.string("from", node));
        let path = fields
            .get("path")
            .and_then(|node| self.string("path", node));
        let convert = fields.get("convert").and_then(|node| self.convert(node));
        let default = fields.get("default").and_then(|node| self.default(node));
        let missing = fields
            .get("missing")
            .and_then(|node| self.constant("missing", node));
        let required = fields
            .get("required")
            .and_then(|node| self.flag("required", node))
            .unwrap_or(false);
        let empty_is_null = fields
            .get("empty_is_null")
            .and_then(|node| self.flag("empty_is_null", node))
            .unwrap_or(false);
        if path.is_none() && default.is_none() {
            self.errors.push(MappingError::MissingKey {
                key: "path",
                context,
                span: column.span,
                help: "give `path` (a JSONPath relative to `from`), or a `default` to derive the value".into(),
            });
        }
        Some(RawBinding {
            column,
            from,
            path,
            convert,
            default,
            missing,
            required,
            empty_is_null,
        })
    }

    fn convert(&mut self, node: &Node) -> Option<RawConvert> {
        if let Some(name) = self.scalar_string(node) {
            return Some(RawConvert {
                name,
                argument: None,
            });
        }
        let map = node.as_mapping().filter(|map| map.len() == 1);
        let Some((name, argument)) = map.and_then(|map| map.iter().next()) else {
            self.wrong_type(
                "convert",
                "a conversion name, or `{date_time_key: SECONDS}`",
                node,
            );
            return None;
        };
        let name = Sp {
            value: name.as_str().to_owned(),
            span: self.scalar_span(name),
        };
        let argument = self.integer(&name.value, argument);
        Some(RawConvert { name, argument })
    }

    fn default(&mut self, node: &Node) -> Option<Sp<RawDefault>> {
        let span = self.line_span(node);
        if node.as_mapping().is_none() {
            let constant = self.constant("default", node)?;
            return Some(Sp {
                value: RawDefault::Constant(constant.value),
                span: constant.span,
            });
        }
        let keys: Vec<&str> = vocabulary::names(DERIVATIONS)
            .chain([vocabulary::EQUALS])
            .collect();
        let fields = self.fields(node, "default", span, "default", &keys)?;
        let chosen: Vec<&str> = vocabulary::names(DERIVATIONS)
            .filter(|key| fields.get(key).is_some())
            .collect();
        let [derivation] = chosen.as_slice() else {
            self.errors.push(MappingError::MissingKey {
                key: "position",
                context: "default".into(),
                span,
                help: format!(
                    "a derived default has exactly one of {}",
                    crate::diagnostic::quoted_list(
                        &vocabulary::names(DERIVATIONS).collect::<Vec<_>>()
                    )
                ),
            });
            return None;
        };
        let argument = self.string(derivation, fields.get(derivation)?)?;
        let value = match *derivation {
            "position" => RawDefault::Position(argument),
            "ordinal" => RawDefault::Ordinal(argument),
            "url_host" => RawDefault::UrlPart(UrlPart::Host, argument),
            "url_path" => RawDefault::UrlPart(UrlPart::Path, argument),
            "url_query" => RawDefault::UrlPart(UrlPart::Query, argument),
            quantifier => {
                let equals = self
                    .required(
                        &fields,
                        "equals",
                        "`any` and `all` compare each value with `equals`",
                    )
                    .and_then(|node| self.constant("equals", node))?;
                RawDefault::Quantified {
                    all: quantifier == "all",
                    path: argument,
                    equals,
                }
            }
        };
        if !matches!(value, RawDefault::Quantified { .. })
            && let Some((key, _)) = fields
                .entries
                .iter()
                .find(|(key, _)| key.as_str() == "equals")
        {
            self.errors.push(MappingError::UnknownKey {
                key: "equals".into(),
                context: format!("default `{derivation}`"),
                span: self.scalar_span(key),
                help: Some("`equals` goes with `any` or `all`".into()),
            });
        }
        Some(Sp { value, span })
    }

    fn dimension(&mut self, column: Sp<String>, node: &Node) -> Option<RawDimension> {
        let context = format!("dimension `{}`", column.value);
        let fields = self.fields(node, &column.value, column.span, &context, DIMENSION_KEYS)?;
        let table = self
            .required(
                &fields,
                "table",
                "name the dimension table: `table: MY_DIMENSION`",
            )
            .and_then(|node| self.string("table", node));
        let kind = match (fields.get("static"), fields.get("get_or_create")) {
            (Some(node), None) => self.static_kind(node),
            (None, Some(node)) => self.get_or_create_kind(node),
            _ => {
                self.errors.push(MappingError::DimensionKind {
                    dimension: column.value.clone(),
                    span: column.span,
                });
                None
            }
        };
        let matches = match self.required(
            &fields,
            "match",
            "bind the dimension's natural key columns under `match:`",
        ) {
            Some(node) => self.entries(node, "match", |reader, column, node| {
                reader.binding(column, node, "match column")
            }),
            None => Vec::new(),
        };
        Some(RawDimension {
            column,
            table,
            kind,
            matches,
        })
    }

    fn static_kind(&mut self, node: &Node) -> Option<RawDimensionKind> {
        let span = self.line_span(node);
        let fields = self.fields(node, "static", span, "`static`", STATIC_KEYS)?;
        let members = self
            .required(
                &fields,
                "members",
                "list the member values: `members: [A, B, UNKNOWN]`",
            )
            .and_then(|node| self.strings("members", node));
        let otherwise = self
            .required(
                &fields,
                "otherwise",
                "name the member any other value maps to: `otherwise: UNKNOWN`",
            )
            .and_then(|node| self.string("otherwise", node));
        Some(RawDimensionKind::Static {
            members: members?,
            otherwise: otherwise?,
        })
    }

    fn get_or_create_kind(&mut self, node: &Node) -> Option<RawDimensionKind> {
        let span = self.line_span(node);
        let fields = self.fields(
            node,
            "get_or_create",
            span,
            "`get_or_create`",
            GET_OR_CREATE_KEYS,
        )?;
        let absent = self
            .required(
                &fields,
                "absent",
                "name the value absent attributes take: `absent: NO_VALUE`",
            )
            .and_then(|node| self.string("absent", node))?;
        Some(RawDimensionKind::GetOrCreate { absent })
    }

    // --- generic readers -------------------------------------------------

    /// The entries of a mapping whose keys are names chosen by the author
    /// (scopes, columns), each read by `read`.
    pub(crate) fn entries<T>(
        &mut self,
        node: &Node,
        key: &str,
        mut read: impl FnMut(&mut Self, Sp<String>, &Node) -> Option<T>,
    ) -> Vec<T> {
        let Some(map) = node.as_mapping() else {
            self.wrong_type(key, "a mapping of names to definitions", node);
            return Vec::new();
        };
        map.iter()
            .filter_map(|(name, value)| {
                let name = Sp {
                    value: name.as_str().to_owned(),
                    span: self.scalar_span(name),
                };
                read(self, name, value)
            })
            .collect()
    }

    /// A mapping with a fixed set of keys; unknown keys are reported.
    pub(crate) fn fields<'n>(
        &mut self,
        node: &'n Node,
        key: &str,
        owner: SourceSpan,
        context: &str,
        allowed: &[&str],
    ) -> Option<Fields<'n>> {
        let Some(map) = node.as_mapping() else {
            self.wrong_type(key, "a mapping", node);
            return None;
        };
        for name in map.keys() {
            if !allowed.contains(&name.as_str()) {
                self.errors.push(MappingError::UnknownKey {
                    key: name.as_str().to_owned(),
                    context: context.to_owned(),
                    span: self.scalar_span(name),
                    help: suggest(name.as_str(), allowed.iter().copied()),
                });
            }
        }
        Some(Fields {
            entries: map.iter().collect(),
            owner,
            context: context.to_owned(),
        })
    }

    pub(crate) fn required<'n>(
        &mut self,
        fields: &Fields<'n>,
        key: &'static str,
        help: &str,
    ) -> Option<&'n Node> {
        let node = fields.get(key);
        if node.is_none() {
            self.errors.push(MappingError::MissingKey {
                key,
                context: fields.context.clone(),
                span: fields.owner,
                help: help.to_owned(),
            });
        }
        node
    }

    pub(crate) fn scalar_string(&self, node: &Node) -> Option<Sp<String>> {
        let scalar = node.as_scalar().filter(|scalar| !is_null(scalar))?;
        Some(Sp {
            value: scalar.as_str().to_owned(),
            span: self.scalar_span(scalar),
        })
    }

    pub(crate) fn string(&mut self, key: &str, node: &Node) -> Option<Sp<String>> {
        let value = self.scalar_string(node);
        if value.is_none() {
            self.wrong_type(key, "a string", node);
        }
        value
    }

    pub(crate) fn flag(&mut self, key: &str, node: &Node) -> Option<bool> {
        let value = node.as_scalar().and_then(MarkedScalarNode::as_bool);
        if value.is_none() {
            self.wrong_type(key, "true or false", node);
        }
        value
    }

    pub(crate) fn integer(&mut self, key: &str, node: &Node) -> Option<Sp<i64>> {
        let scalar = node.as_scalar().filter(|scalar| scalar.may_coerce());
        match scalar.and_then(|scalar| scalar.as_str().parse::<i64>().ok().map(|v| (scalar, v))) {
            Some((scalar, value)) => Some(Sp {
                value,
                span: self.scalar_span(scalar),
            }),
            None => {
                self.wrong_type(key, "an integer", node);
                None
            }
        }
    }

    /// A constant: a plain scalar that reads as an integer is one, any other
    /// scalar is text (quote digits to make them text).
    pub(crate) fn constant(&mut self, key: &str, node: &Node) -> Option<Sp<Constant>> {
        let text = self.string(key, node)?;
        let plain = node.as_scalar().is_some_and(MarkedScalarNode::may_coerce);
        let value = match text.value.parse::<i64>() {
            Ok(number) if plain => Constant::Int(number),
            _ => Constant::Text(text.value),
        };
        Some(Sp {
            value,
            span: text.span,
        })
    }

    pub(crate) fn strings(&mut self, key: &str, node: &Node) -> Option<Sp<Vec<Sp<String>>>> {
        let Some(list) = node.as_sequence() else {
            self.wrong_type(key, "a list of names", node);
            return None;
        };
        let items = list
            .iter()
            .filter_map(|item| self.string(key, item))
            .collect();
        Some(Sp {
            value: items,
            span: self.line_span(node),
        })
    }

    pub(crate) fn wrong_type(&mut self, key: &str, expected: &'static str, node: &Node) {
        let found = match node {
            Node::Scalar(scalar) if is_null(scalar) => "nothing".to_owned(),
            Node::Scalar(scalar) => format!("`{}`", scalar.as_str()),
            Node::Mapping(_) => "a mapping".to_owned(),
            Node::Sequence(_) => "a list".to_owned(),
        };
        self.errors.push(MappingError::InvalidType {
            key: key.to_owned(),
            expected,
            found,
            span: self.line_span(node),
        });
    }

    // --- spans -----------------------------------------------------------

    /// marked-yaml counts characters; miette wants byte offsets.
    fn offset(&self, marker: Option<&Marker>) -> usize {
        let chars = marker.map_or(0, Marker::character);
        if self.text.is_ascii() {
            chars.min(self.text.len())
        } else {
            self.text
                .char_indices()
                .nth(chars)
                .map_or(self.text.len(), |(at, _)| at)
        }
    }

    /// The span of a scalar's text, inside its quotes when it is quoted.
    pub(crate) fn scalar_span(&self, scalar: &MarkedScalarNode) -> SourceSpan {
        let start = self.offset(scalar.span().start());
        let rest = &self.text[start..];
        match rest.chars().next() {
            Some(quote @ ('"' | '\'')) => (start + 1, quoted_len(&rest[1..], quote)).into(),
            _ => (start, scalar.as_str().len().min(rest.len())).into(),
        }
    }

    /// A scalar's span; for a mapping or list, the rest of its first line.
    pub(crate) fn line_span(&self, node: &Node) -> SourceSpan {
        if let Node::Scalar(scalar) = node {
            return self.scalar_span(scalar);
        }
        let start = self.offset(node.span().start());
        let line = self.text[start..].lines().next().unwrap_or_default();
        (start, line.trim_end().len()).into()
    }

    fn load_error(&self, error: LoadError) -> MappingError {
        let (marker, message) = match &error {
            LoadError::TopLevelMustBeMapping(at) => (
                *at,
                "a mapping file is a YAML mapping (`name: ...`)".to_owned(),
            ),
            LoadError::TopLevelMustBeSequence(at) => {
                (*at, "unexpected list at the top level".to_owned())
            }
            LoadError::UnexpectedAnchor(at) => {
                (*at, "anchors and aliases are not supported".to_owned())
            }
            LoadError::MappingKeyMustBeScalar(at) => {
                (*at, "mapping keys must be plain names".to_owned())
            }
            LoadError::UnexpectedTag(at) => (*at, "tags are not supported".to_owned()),
            LoadError::ScanError(at, scan) => (*at, scan.info().to_owned()),
            LoadError::DuplicateKey(inner) => {
                return MappingError::DuplicateKey {
                    key: inner.key.as_str().to_owned(),
                    span: self.scalar_span(&inner.key),
                    first: self.scalar_span(&inner.prev_key),
                };
            }
        };
        let start = self.offset(Some(&marker));
        MappingError::YamlSyntax {
            message,
            span: (start, 1.min(self.text.len() - start)).into(),
        }
    }
}

fn is_null(scalar: &MarkedScalarNode) -> bool {
    scalar.may_coerce() && matches!(scalar.as_str(), "" | "~" | "null" | "Null" | "NULL")
}

/// The byte length of a quoted scalar's content, up to its closing quote.
fn quoted_len(content: &str, quote: char) -> usize {
    let mut chars = content.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        match c {
            '\\' if quote == '"' => {
                chars.next();
            }
            '\'' if quote == '\'' && chars.peek().is_some_and(|(_, next)| *next == '\'') => {
                chars.next();
            }
            c if c == quote => return at,
            _ => {}
        }
    }
    content.len()
}
