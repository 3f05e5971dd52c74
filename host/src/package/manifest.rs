//! A package's manifest: who published the agent, which version, and the
//! authority it asks for. Written by a publisher as `toka.toml`, carried in
//! the package as the `toka:manifest` custom section (JSON), covered by the
//! publisher's signature.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::capability::budget::Budget;
use crate::capability::rights::Right;

/// The largest manifest accepted, as `toka.toml` and as the section.
pub const MAX_MANIFEST: usize = toka_kernel::MAX_MANIFEST;

/// The longest text field (name, version, publisher, homepage).
const MAX_FIELD: usize = 256;

/// The longest description.
const MAX_DESCRIPTION: usize = 4096;

/// The most rights (and the most budgets) a manifest may ask for.
const MAX_REQUESTS: usize = 64;

/// What a publisher says of a package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The agent's name, as installed (a valid agent name).
    pub name: String,
    /// The package's version, e.g. `1.2.0`.
    pub version: String,
    /// Who publishes it, e.g. `acme`.
    pub publisher: String,
    /// What it does, for the operator who approves it.
    #[serde(default)]
    pub description: String,
    /// Where to read more.
    #[serde(default)]
    pub homepage: Option<String>,
    /// The rights it asks for, as `--grant` takes them (e.g. `observe`,
    /// `fs.read /data`), in the order written.
    #[serde(default)]
    pub rights: Vec<String>,
    /// The budgets it asks for, as `--budget` takes them (e.g.
    /// `memory=16MiB`).
    #[serde(default)]
    pub budgets: Vec<String>,
}

/// Why a manifest is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// Larger than [`MAX_MANIFEST`].
    #[error("the manifest is {size} bytes; at most {max} are accepted")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// Not TOML (or, in a package, not the JSON the section holds).
    #[error("the manifest does not parse: {0}")]
    Syntax(String),
    /// A field the manifest schema does not have.
    #[error(
        "the manifest has an unknown field `{0}` (known: name, version, publisher, description, homepage, rights, budgets)"
    )]
    UnknownField(String),
    /// A required field is missing.
    #[error("the manifest has no `{0}`")]
    Missing(&'static str),
    /// A field has the wrong type or an unacceptable value.
    #[error("the manifest's `{field}` {problem}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// A requested right does not parse.
    #[error("the manifest requests the right `{right}`, which is not one: {reason}")]
    Right {
        /// The right as written.
        right: String,
        /// Why it does not parse.
        reason: String,
    },
    /// A requested budget does not parse.
    #[error("the manifest requests the budget `{budget}`, which is not one: {reason}")]
    Budget {
        /// The budget as written.
        budget: String,
        /// Why it does not parse.
        reason: String,
    },
}

impl Manifest {
    /// Reads a `toka.toml`.
    ///
    /// # Errors
    ///
    /// [`ManifestError`] naming the first problem.
    pub fn from_toml(text: &str) -> Result<Manifest, ManifestError> {
        check_size(text.len())?;
        let document: toml_edit::DocumentMut = text
            .parse()
            .map_err(|e: toml_edit::TomlError| ManifestError::Syntax(e.to_string()))?;
        let mut manifest = Manifest {
            name: String::new(),
            version: String::new(),
            publisher: String::new(),
            description: String::new(),
            homepage: None,
            rights: Vec::new(),
            budgets: Vec::new(),
        };
        let (mut name, mut version, mut publisher) = (None, None, None);
        for (key, item) in document.iter() {
            match key {
                "name" => name = Some(text_field("name", item)?),
                "version" => version = Some(text_field("version", item)?),
                "publisher" => publisher = Some(text_field("publisher", item)?),
                "description" => manifest.description = text_field("description", item)?,
                "homepage" => manifest.homepage = Some(text_field("homepage", item)?),
                "rights" => {
                    let array = item.as_array().ok_or(ManifestError::Invalid {
                        field: "rights",
                        problem: "must be a list of right strings".into(),
                    })?;
                    for value in array {
                        let right = value.as_str().ok_or(ManifestError::Invalid {
                            field: "rights",
                            problem: "must be a list of right strings".into(),
                        })?;
                        manifest.rights.push(right.to_owned());
                    }
                }
                "budgets" => {
                    let table = item.as_table_like().ok_or(ManifestError::Invalid {
                        field: "budgets",
                        problem: "must be a table like `memory = \"16MiB\"`".into(),
                    })?;
                    for (budget, value) in table.iter() {
                        let value = if let Some(text) = value.as_str() {
                            text.to_owned()
                        } else if let Some(n) = value.as_integer() {
                            n.to_string()
                        } else {
                            return Err(ManifestError::Invalid {
                                field: "budgets",
                                problem: format!("`{budget}` must be a string or a number"),
                            });
                        };
                        manifest.budgets.push(format!("{budget}={value}"));
                    }
                }
                other => return Err(ManifestError::UnknownField(crate::text::clip(other, 64))),
            }
        }
        manifest.name = name.ok_or(ManifestError::Missing("name"))?;
        manifest.version = version.ok_or(ManifestError::Missing("version"))?;
        manifest.publisher = publisher.ok_or(ManifestError::Missing("publisher"))?;
        manifest.validate()?;
        Ok(manifest)
    }

    /// The manifest as the package carries it.
    #[must_use]
    pub fn to_section(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads the manifest a package carries.
    ///
    /// # Errors
    ///
    /// [`ManifestError`] naming the first problem.
    pub fn from_section(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        check_size(bytes.len())?;
        let manifest: Manifest =
            serde_json::from_slice(bytes).map_err(|e| ManifestError::Syntax(e.to_string()))?;
        manifest.validate()?;
        Ok(manifest)
    }

    /// The rights it requests, parsed.
    #[must_use]
    pub fn requested_rights(&self) -> Vec<Right> {
        self.rights.iter().filter_map(|r| r.parse().ok()).collect()
    }

    /// The budgets it requests, parsed.
    #[must_use]
    pub fn requested_budgets(&self) -> Vec<Budget> {
        self.budgets.iter().filter_map(|b| b.parse().ok()).collect()
    }

    /// The manifest as a person reads it, one field a line.
    #[must_use]
    pub fn describe(&self) -> String {
        let mut out = String::new();
        let clip = |s: &str| crate::text::clip(s, 200);
        let _ = writeln!(out, "name:        {}", clip(&self.name));
        let _ = writeln!(out, "version:     {}", clip(&self.version));
        let _ = writeln!(out, "publisher:   {}", clip(&self.publisher));
        if !self.description.is_empty() {
            let _ = writeln!(out, "description: {}", clip(&self.description));
        }
        if let Some(homepage) = &self.homepage {
            let _ = writeln!(out, "homepage:    {}", clip(homepage));
        }
        let list = |items: &[String]| {
            if items.is_empty() {
                "(none)".to_owned()
            } else {
                items.iter().map(|i| clip(i)).collect::<Vec<_>>().join(", ")
            }
        };
        let _ = writeln!(out, "rights:      {}", list(&self.rights));
        let _ = write!(out, "budgets:     {}", list(&self.budgets));
        out
    }

    /// Checks every field (the same checks from TOML and from a package).
    fn validate(&self) -> Result<(), ManifestError> {
        toka_kernel::validate_name("agent", &self.name, &toka_kernel::Limits::default()).map_err(
            |e| ManifestError::Invalid {
                field: "name",
                problem: e.to_string(),
            },
        )?;
        for (field, value, max) in [
            ("version", self.version.as_str(), MAX_FIELD),
            ("publisher", self.publisher.as_str(), MAX_FIELD),
            ("description", self.description.as_str(), MAX_DESCRIPTION),
            (
                "homepage",
                self.homepage.as_deref().unwrap_or(""),
                MAX_FIELD,
            ),
        ] {
            if value.len() > max {
                return Err(ManifestError::Invalid {
                    field,
                    problem: format!("is {} bytes; at most {max} are accepted", value.len()),
                });
            }
            if value.chars().any(char::is_control) {
                return Err(ManifestError::Invalid {
                    field,
                    problem: "has control characters".into(),
                });
            }
        }
        for (field, value) in [("version", &self.version), ("publisher", &self.publisher)] {
            if value.trim().is_empty() {
                return Err(ManifestError::Invalid {
                    field,
                    problem: "is empty".into(),
                });
            }
        }
        if self.rights.len() > MAX_REQUESTS || self.budgets.len() > MAX_REQUESTS {
            return Err(ManifestError::Invalid {
                field: if self.rights.len() > MAX_REQUESTS {
                    "rights"
                } else {
                    "budgets"
                },
                problem: format!("lists more than {MAX_REQUESTS} entries"),
            });
        }
        for right in &self.rights {
            let parsed: Result<Right, _> = right.parse();
            match parsed {
                Err(e) => {
                    return Err(ManifestError::Right {
                        right: crate::text::clip(right, 100),
                        reason: e.to_string(),
                    });
                }
                Ok(parsed) if parsed.op() == crate::capability::rights::RightOp::Operator => {
                    return Err(ManifestError::Right {
                        right: crate::text::clip(right, 100),
                        reason: "operator rights are for the API's clients, never for an agent"
                            .into(),
                    });
                }
                Ok(_) => {}
            }
        }
        for budget in &self.budgets {
            budget
                .parse::<Budget>()
                .map_err(|e| ManifestError::Budget {
                    budget: crate::text::clip(budget, 100),
                    reason: e.to_string(),
                })?;
        }
        Ok(())
    }
}

fn check_size(size: usize) -> Result<(), ManifestError> {
    if size > MAX_MANIFEST {
        return Err(ManifestError::TooLarge {
            size,
            max: MAX_MANIFEST,
        });
    }
    Ok(())
}

fn text_field(field: &'static str, item: &toml_edit::Item) -> Result<String, ManifestError> {
    item.as_str()
        .map(str::to_owned)
        .ok_or(ManifestError::Invalid {
            field,
            problem: "must be a string".into(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "summarizer"
version = "1.2.0"
publisher = "acme"
description = "Summarizes documents"
homepage = "https://example.com/summarizer"
rights = ["observe", "state", "fs.read /data"]

[budgets]
memory = "16MiB"
deadline = "5s"
"#;

    #[test]
    fn a_manifest_reads_from_toml_and_round_trips_through_its_section() {
        let manifest = Manifest::from_toml(GOOD).unwrap();
        assert_eq!(manifest.name, "summarizer");
        assert_eq!(manifest.rights, ["observe", "state", "fs.read /data"]);
        assert_eq!(manifest.budgets, ["memory=16MiB", "deadline=5s"]);
        assert_eq!(manifest.requested_rights().len(), 3);
        assert_eq!(manifest.requested_budgets().len(), 2);
        assert_eq!(
            Manifest::from_section(&manifest.to_section()).unwrap(),
            manifest
        );
    }

    #[test]
    fn bad_manifests_are_refused_naming_the_problem() {
        let cases: [(String, &str); 9] = [
            ("name = ".into(), "does not parse"),
            (GOOD.replace("name = \"summarizer\"\n", ""), "no `name`"),
            (
                GOOD.replace("\"observe\"", "\"fly\""),
                "requests the right `fly`",
            ),
            (
                GOOD.replace("\"16MiB\"", "\"lots\""),
                "requests the budget `memory=lots`",
            ),
            (
                GOOD.replace("version = \"1.2.0\"", "version = 3"),
                "`version` must be a string",
            ),
            (
                format!("{GOOD}\nextra = 1\n").replace("[budgets]", "extra2 = 2\n[budgets]"),
                "unknown field `extra2`",
            ),
            (
                GOOD.replace("\"observe\"", "\"operator admin\""),
                "operator rights",
            ),
            (GOOD.replace("summarizer\"", "bad\\u0007name\""), "`name`"),
            (
                format!("{GOOD}#{}", "x".repeat(MAX_MANIFEST)),
                "at most 65536",
            ),
        ];
        for (text, needle) in cases {
            let error = Manifest::from_toml(&text).unwrap_err().to_string();
            assert!(error.contains(needle), "{error:?} does not name {needle:?}");
        }
        assert!(Manifest::from_section(b"{\"name\": 1}").is_err());
    }
}
