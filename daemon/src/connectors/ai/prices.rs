//! What model calls cost: USD per million input and output tokens, by model. Defaults for
//! common models; an operator replaces or extends them with `MANTLE_AI_PRICES_FILE`.

use std::collections::BTreeMap;

use serde::Deserialize;

/// A model's price, USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input_per_million: f64,
    pub output_per_million: f64,
}

/// Prices by model name. A model is priced by its exact name, else by the longest name in
/// the table that its name starts with followed by `-` (`gpt-4o-2024-08-06` is priced as
/// `gpt-4o`).
#[derive(Debug, Clone, PartialEq)]
pub struct Prices(BTreeMap<String, Price>);

/// The defaults: list prices of common models, USD per million tokens (input, output).
const DEFAULTS: &[(&str, f64, f64)] = &[
    ("gpt-4o", 2.5, 10.0),
    ("gpt-4o-mini", 0.15, 0.6),
    ("gpt-4.1", 2.0, 8.0),
    ("gpt-4.1-mini", 0.4, 1.6),
    ("gpt-4.1-nano", 0.1, 0.4),
    ("gpt-5", 1.25, 10.0),
    ("gpt-5-mini", 0.25, 2.0),
    ("gpt-5-nano", 0.05, 0.4),
    ("o3", 2.0, 8.0),
    ("o4-mini", 1.1, 4.4),
    ("claude-opus-4", 15.0, 75.0),
    ("claude-opus-4-1", 15.0, 75.0),
    ("claude-sonnet-4", 3.0, 15.0),
    ("claude-sonnet-4-5", 3.0, 15.0),
    ("claude-haiku-4-5", 1.0, 5.0),
    ("claude-3-7-sonnet", 3.0, 15.0),
    ("claude-3-5-sonnet", 3.0, 15.0),
    ("claude-3-5-haiku", 0.8, 4.0),
];

impl Default for Prices {
    fn default() -> Prices {
        Prices(
            DEFAULTS
                .iter()
                .map(|&(m, i, o)| {
                    (
                        m.to_owned(),
                        Price {
                            input_per_million: i,
                            output_per_million: o,
                        },
                    )
                })
                .collect(),
        )
    }
}

impl Prices {
    /// The defaults with the entries of a price file (JSON: `{"model": {"input_per_million":
    /// 2.5, "output_per_million": 10}}`) added over them.
    pub fn with_file(text: &str) -> Result<Prices, String> {
        let extra: BTreeMap<String, Price> =
            serde_json::from_str(text).map_err(|e| format!("not a price table: {e}"))?;
        let mut prices = Prices::default();
        for (model, price) in extra {
            let ok = |v: f64| v.is_finite() && v >= 0.0;
            if !ok(price.input_per_million) || !ok(price.output_per_million) {
                return Err(format!("{model}: prices must be finite and not negative"));
            }
            prices.0.insert(model, price);
        }
        Ok(prices)
    }

    /// The price of `model`, if the table has one.
    pub fn get(&self, model: &str) -> Option<Price> {
        if let Some(p) = self.0.get(model) {
            return Some(*p);
        }
        self.0
            .iter()
            .filter(|(name, _)| {
                model
                    .strip_prefix(name.as_str())
                    .is_some_and(|rest| rest.starts_with('-'))
            })
            .max_by_key(|(name, _)| name.len())
            .map(|(_, p)| *p)
    }

    /// What `input` and `output` tokens of `model` cost, if it has a price.
    pub fn cost(&self, model: &str, input: u64, output: u64) -> Option<f64> {
        self.get(model).map(|p| {
            (input as f64 * p.input_per_million + output as f64 * p.output_per_million) / 1e6
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models_are_priced_by_name_or_dated_name() {
        let prices = Prices::default();
        assert_eq!(prices.cost("gpt-4o", 1_000_000, 0), Some(2.5));
        // A dated model takes its family's price; the longest family wins.
        assert_eq!(prices.cost("gpt-4o-2024-08-06", 0, 1_000_000), Some(10.0));
        assert_eq!(
            prices.cost("gpt-4o-mini-2024-07-18", 1_000_000, 0),
            Some(0.15)
        );
        assert_eq!(
            prices.cost("claude-sonnet-4-5-20250929", 1000, 1000),
            Some(0.018)
        );
        // No price: the caller decides.
        assert_eq!(prices.cost("gpt-4odd", 1, 1), None);
        assert_eq!(prices.cost("my-local-model", 1, 1), None);
    }

    #[test]
    fn a_price_file_adds_and_overrides() {
        let prices = Prices::with_file(
            r#"{"gpt-4o": {"input_per_million": 1, "output_per_million": 2},
                "local": {"input_per_million": 0, "output_per_million": 0}}"#,
        )
        .unwrap();
        assert_eq!(prices.cost("gpt-4o", 1_000_000, 1_000_000), Some(3.0));
        assert_eq!(prices.cost("local", 5, 5), Some(0.0));
        assert_eq!(prices.cost("claude-3-5-haiku", 1_000_000, 0), Some(0.8));
        let bad = Prices::with_file(r#"{"m": {"input_per_million": -1, "output_per_million": 0}}"#);
        assert_eq!(
            bad.unwrap_err(),
            "m: prices must be finite and not negative"
        );
        assert!(Prices::with_file(r#"{"m": {"input": 1}}"#).is_err());
    }
}
