//! docs/CONFIG.md is the reference operators read: every `toml` block in it must parse (unknown
//! keys are errors) and its table must list every key the store accepts.

use broker::store::StoreConfig;

fn config_doc() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/CONFIG.md"))
        .expect("docs/CONFIG.md")
}

#[test]
fn every_toml_example_parses_and_validates() {
    let doc = config_doc();
    let blocks: Vec<&str> = doc
        .split("```toml")
        .skip(1)
        .map(|b| b.split("```").next().unwrap())
        .collect();
    assert!(!blocks.is_empty());
    for block in blocks {
        let config: StoreConfig =
            toml::from_str(block).unwrap_or_else(|err| panic!("{err}\n{block}"));
        config.validate().unwrap();
        assert_eq!(
            StoreConfig {
                store_path: StoreConfig::default().store_path,
                ..config
            },
            StoreConfig::default(),
            "the example shows the defaults"
        );
    }
}

#[test]
fn every_key_is_documented() {
    let doc = config_doc();
    let keys = toml::to_string(&StoreConfig::default()).unwrap();
    for line in keys.lines() {
        let key = line.split('=').next().unwrap().trim();
        assert!(
            doc.contains(&format!("| `{key}` |")),
            "docs/CONFIG.md does not list `{key}`"
        );
    }
}
