//! The JSON Schemas under `schemas/` that editors use must agree with what
//! martmap itself accepts: every shipped file validates, and the mistakes
//! `validate-mapping` reports as unknown keys are rejected by the schema too.

use std::path::Path;

use serde_json::Value;

use crate::repository;

fn schema(name: &str) -> jsonschema::Validator {
    let text = std::fs::read_to_string(repository().join("schemas").join(name))
        .expect("schema is readable");
    let schema: Value = serde_json::from_str(&text).expect("schema is JSON");
    jsonschema::validator_for(&schema)
        .unwrap_or_else(|error| panic!("{name} is not a valid JSON Schema: {error}"))
}

fn yaml(path: &str) -> Value {
    let text = std::fs::read_to_string(repository().join(path)).expect("file is readable");
    serde_yaml::from_str(&text).unwrap_or_else(|error| panic!("{path}: {error}"))
}

fn errors(validator: &jsonschema::Validator, path: &str) -> Vec<String> {
    validator
        .iter_errors(&yaml(path))
        .map(|error| format!("{}: {error}", error.instance_path()))
        .collect()
}

#[test]
fn mapping_schema_accepts_the_valid_mappings() {
    let validator = schema("mapping.schema.json");
    for path in [
        "mappings/COBROWSE.yaml",
        "mappings/IXN_AGENT.yaml",
        "tests/cases/validate/survey-valid/SURVEY.yaml",
    ] {
        assert_eq!(errors(&validator, path), Vec::<String>::new(), "{path}");
    }
}

#[test]
fn mapping_schema_rejects_what_validate_mapping_rejects_structurally() {
    let validator = schema("mapping.schema.json");
    for case in [
        "unknown-top-level-key",
        "unknown-column-key",
        "unknown-conversion",
    ] {
        let path = format!("tests/cases/validate/{case}/mapping.yaml");
        assert!(
            !errors(&validator, &path).is_empty(),
            "{path} should not match the schema"
        );
    }
}

#[test]
fn aggregate_schema_accepts_the_shipped_aggregates_and_rejects_mistakes() {
    let validator = schema("aggregate.schema.json");
    assert_eq!(
        errors(&validator, "aggregates/AGT_COBROWSE_AGENT.yaml"),
        Vec::<String>::new()
    );
    let broken = errors(
        &validator,
        "tests/cases/validate/aggregate-mistakes/AGT_BROKEN.yaml",
    );
    assert!(
        broken.iter().any(|e| e.contains("descripton")),
        "the unknown key is rejected: {broken:?}"
    );
    assert!(
        broken.iter().any(|e| e.contains("DAYY")),
        "the unknown level is rejected: {broken:?}"
    );
}

#[test]
fn catalog_schema_accepts_every_tables_file() {
    let validator = schema("catalog.schema.json");
    let dirs = [
        "schemas/tables",
        "tests/cases/validate/survey-valid/schemas/tables",
    ];
    let mut checked = 0;
    for dir in dirs {
        for entry in std::fs::read_dir(repository().join(dir)).expect("tables directory") {
            let path = entry.expect("entry").path();
            let relative = path
                .strip_prefix(repository())
                .unwrap_or(&path)
                .display()
                .to_string();
            assert_eq!(
                errors(&validator, &relative),
                Vec::<String>::new(),
                "{relative}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 3, "only {checked} tables files found");
}

#[test]
fn event_schemas_are_valid_json_schemas() {
    let events = repository().join("schemas/events");
    let mut checked = 0;
    for entry in std::fs::read_dir(&events).expect("events directory") {
        let name = entry.expect("entry").file_name();
        schema(&Path::new("events").join(&name).display().to_string());
        checked += 1;
    }
    assert!(checked >= 1);
}

/// The schema editors use names exactly the conversions and derived
/// defaults of martmap's vocabulary.
#[test]
fn mapping_schema_names_the_vocabulary() {
    use martmap::mapping::vocabulary::{Argument, CONVERSIONS, DERIVATIONS, EQUALS};
    let text =
        std::fs::read_to_string(repository().join("schemas/mapping.schema.json")).expect("schema");
    let schema: Value = serde_json::from_str(&text).expect("JSON");
    let definitions = &schema["definitions"];
    let mut in_schema: Vec<String> = Vec::new();
    for branch in definitions["conversion"]["oneOf"]
        .as_array()
        .expect("oneOf")
    {
        if let Some(names) = branch["enum"].as_array() {
            in_schema.extend(names.iter().map(|n| n.as_str().expect("name").to_owned()));
        }
        if let Some(properties) = branch["properties"].as_object() {
            in_schema.extend(properties.keys().cloned());
        }
    }
    let mut in_vocabulary: Vec<String> = CONVERSIONS.iter().map(|w| w.name.to_owned()).collect();
    in_schema.sort();
    in_vocabulary.sort();
    assert_eq!(in_schema, in_vocabulary, "conversions");

    let mut in_schema: Vec<String> = Vec::new();
    for branch in definitions["default"]["oneOf"].as_array().expect("oneOf") {
        if let Some(properties) = branch["properties"].as_object() {
            in_schema.extend(properties.keys().filter(|k| *k != EQUALS).cloned());
            let takes_equals = properties.contains_key(EQUALS);
            for key in properties.keys().filter(|k| *k != EQUALS) {
                let word = DERIVATIONS
                    .iter()
                    .find(|w| w.name == key)
                    .unwrap_or_else(|| panic!("`{key}` is not in the vocabulary"));
                assert_eq!(
                    takes_equals,
                    word.argument == Argument::PathEquals,
                    "`{key}` and `equals`"
                );
            }
        }
    }
    let mut in_vocabulary: Vec<String> = DERIVATIONS.iter().map(|w| w.name.to_owned()).collect();
    in_schema.sort();
    in_vocabulary.sort();
    assert_eq!(in_schema, in_vocabulary, "derived defaults");
}
