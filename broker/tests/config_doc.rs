//! docs/CONFIG.md is the reference operators read: every `toml` block in it must parse as a
//! broker configuration (unknown keys are errors) showing the defaults, and its tables must list
//! every key the broker and the store accept.

use broker::config::{BrokerConfig, BrokerSettings};
use broker::store::StoreConfig;

fn config_doc() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/CONFIG.md"))
        .expect("docs/CONFIG.md")
}

#[test]
fn every_toml_example_parses_and_shows_the_defaults() {
    let doc = config_doc();
    let blocks: Vec<&str> = doc
        .split("```toml")
        .skip(1)
        .map(|b| b.split("```").next().unwrap())
        .collect();
    assert!(blocks.len() >= 2);
    for block in blocks {
        let config = BrokerConfig::from_toml(block).unwrap_or_else(|err| panic!("{err}\n{block}"));
        config.validate().unwrap();
        let defaults = BrokerConfig::default();
        assert_eq!(
            config.broker, defaults.broker,
            "the example shows the defaults"
        );
        assert_eq!(
            StoreConfig {
                store_path: defaults.store.store_path.clone(),
                ..config.store
            },
            defaults.store,
            "the example shows the defaults"
        );
    }
}

#[test]
fn every_key_is_documented() {
    let doc = config_doc();
    let broker_keys = toml::to_string(&BrokerSettings::default()).unwrap();
    let store_keys = toml::to_string(&StoreConfig::default()).unwrap();
    for line in broker_keys.lines().chain(store_keys.lines()) {
        let key = line.split('=').next().unwrap().trim();
        assert!(
            doc.contains(&format!("| `{key}` |")),
            "docs/CONFIG.md does not list `{key}`"
        );
    }
}
