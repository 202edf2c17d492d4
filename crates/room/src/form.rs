//! XEP-0004 data forms as plain data: the room speaks forms (configuration,
//! room info) without depending on an XML library; the edge converts.

/// The type of a data form field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldKind {
    Boolean,
    Hidden,
    JidMulti,
    ListMulti,
    ListSingle,
    TextMulti,
    TextPrivate,
    TextSingle,
}

/// One field of a form, with its current values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    pub var: String,
    pub kind: FieldKind,
    pub label: Option<String>,
    pub values: Vec<String>,
    /// (label, value) pairs for list fields.
    pub options: Vec<(String, String)>,
}

impl Field {
    pub fn new(var: &str, kind: FieldKind, label: Option<&str>, values: Vec<String>) -> Self {
        Field {
            var: var.to_owned(),
            kind,
            label: label.map(str::to_owned),
            values,
            options: Vec::new(),
        }
    }

    pub fn hidden(var: &str, value: &str) -> Self {
        Field::new(var, FieldKind::Hidden, None, vec![value.to_owned()])
    }

    pub fn boolean(var: &str, label: &str, value: bool) -> Self {
        Field::new(
            var,
            FieldKind::Boolean,
            Some(label),
            vec![bool_str(value).to_owned()],
        )
    }

    pub fn text(var: &str, label: &str, value: &str) -> Self {
        Field::new(
            var,
            FieldKind::TextSingle,
            Some(label),
            vec![value.to_owned()],
        )
    }

    pub fn with_options(mut self, options: &[(&str, &str)]) -> Self {
        self.options = options
            .iter()
            .map(|(l, v)| ((*l).to_owned(), (*v).to_owned()))
            .collect();
        self
    }
}

/// A form as sent to a client: `form` (to fill in) or `result` (to read).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Form {
    pub title: Option<String>,
    pub fields: Vec<Field>,
}

/// A submitted form: field name to values, in submission order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Submission {
    pub fields: Vec<(String, Vec<String>)>,
}

impl Submission {
    pub fn get(&self, var: &str) -> Option<&[String]> {
        self.fields
            .iter()
            .find(|(v, _)| v == var)
            .map(|(_, values)| values.as_slice())
    }

    pub fn single(&self, var: &str) -> Option<&str> {
        self.get(var)
            .map(|v| v.first().map(String::as_str).unwrap_or(""))
    }
}

pub(crate) fn bool_str(b: bool) -> &'static str {
    if b { "1" } else { "0" }
}

/// XEP-0004 booleans: "1"/"true" and "0"/"false".
pub(crate) fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "true" => Some(true),
        "0" | "false" => Some(false),
        _ => None,
    }
}
