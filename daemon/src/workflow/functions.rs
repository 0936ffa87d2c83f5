//! The CEL environment workflow expressions (`if:`, `outputs:` and `{{ }}` templates) are
//! compiled and evaluated with: the standard library, the `strings`, `lists` and `math`
//! extensions of the `cel` crate, and Mantle's own functions, named as in the original Go
//! Mantle so its workflow files keep working.
//!
//! Every function is declared on the [`Env`] (as overloads, or, for `default`, as a macro),
//! so callers need nothing but [`env()`]:
//!
//! ```ignore
//! let env = functions::env();
//! let program = env.compile("default(inputs.name, 'world').toUpper()")?; // not Program::compile
//! let mut context = cel::Context::with_env(env);
//! context.add_variable_from_value("inputs", functions::json_to_value(inputs_json));
//! let value = program.execute(&context)?;
//! ```
//!
//! Programs must be compiled with [`Env::compile`] (or [`Env::parser`]): `cel::Program::compile`
//! only expands the standard macros, and would leave `default(..)` an undeclared function.
//!
//! A function's error is an [`ExecutionError::FunctionError`] naming the function, with a
//! lowercase message saying what was wrong; calling a function with arguments of the wrong types
//! is cel's own "found no matching overload" error.

use std::fmt::Write as _;
use std::sync::{Arc, OnceLock};

use cel::common::ast::{CallExpr, Expr, IdedExpr, LiteralValue, operators};
use cel::common::types::{
    CelDouble, CelInt, CelList, CelString, CelTimestamp, DYN_TYPE, LIST_TYPE, STRING_TYPE,
    TIMESTAMP_TYPE,
};
use cel::common::value::{CowVal, Val};
use cel::objects::Key;
use cel::parser::{Macro, MacroExprHelper, ParseError};
use cel::{DeclarationError, Env, ExecutionError, Value, extensions};
use chrono::format::{Item, StrftimeItems};
use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, Utc};

/// The most parts `split` returns before failing.
pub const MAX_SPLIT_PARTS: usize = 10_000;
/// The longest string, in bytes, `jsonDecode` accepts.
pub const MAX_JSON_DECODE_BYTES: usize = 1024 * 1024;
/// How deeply lists and maps may nest for `jsonEncode` and `toString`.
const MAX_JSON_ENCODE_DEPTH: usize = 512;
/// The most nodes the `value` of `default(value, fallback)` may have: the macro copies it.
pub const MAX_DEFAULT_VALUE_NODES: usize = 500;
/// How many characters of an offending input an error message quotes.
const QUOTED_CHARS: usize = 64;

/// The CEL environment every workflow expression is compiled and evaluated with: the standard
/// library, the strings, lists and math extensions, and Mantle's functions below. Built once.
pub fn env() -> Arc<Env> {
    static ENV: OnceLock<Arc<Env>> = OnceLock::new();
    Arc::clone(ENV.get_or_init(|| {
        // Only a programming error here (two declarations of one overload) can fail, and the
        // tests build this environment: no input reaches it.
        Arc::new(build_env().expect("the workflow CEL environment declares each overload once"))
    }))
}

/// Names of every function (standard and added) an expression may call, sorted, for "did you mean"
/// hints. Macros (`has`, `all`, `default`, ...) included; internal names (`@in`, `_+_`, ...) not.
pub fn function_names() -> &'static [&'static str] {
    FUNCTION_NAMES
}

/// Kept sorted (byte order) and complete: the tests check that each name is declared.
const FUNCTION_NAMES: &[&str] = &[
    "all",
    "bool",
    "bytes",
    "charAt",
    "contains",
    "default",
    "distinct",
    "double",
    "duration",
    "dyn",
    "endsWith",
    "exists",
    "existsOne",
    "exists_one",
    "filter",
    "flatten",
    "format",
    "formatTimestamp",
    "getDate",
    "getDayOfMonth",
    "getDayOfWeek",
    "getDayOfYear",
    "getFullYear",
    "getHours",
    "getMilliseconds",
    "getMinutes",
    "getMonth",
    "getSeconds",
    "has",
    "hasValue",
    "indexOf",
    "int",
    "join",
    "jsonDecode",
    "jsonEncode",
    "lastIndexOf",
    "lists.range",
    "lowerAscii",
    "map",
    "matches",
    "math.abs",
    "math.bitAnd",
    "math.bitNot",
    "math.bitOr",
    "math.bitShiftLeft",
    "math.bitShiftRight",
    "math.bitXor",
    "math.ceil",
    "math.floor",
    "math.greatest",
    "math.isFinite",
    "math.isInf",
    "math.isNaN",
    "math.least",
    "math.round",
    "math.sign",
    "math.sqrt",
    "math.trunc",
    "now",
    "optFlatMap",
    "optMap",
    "optional.none",
    "optional.of",
    "optional.ofNonZeroValue",
    "or",
    "orValue",
    "parseFloat",
    "parseInt",
    "parseTimestamp",
    "replace",
    "reverse",
    "size",
    "slice",
    "sort",
    "sortBy",
    "split",
    "startsWith",
    "string",
    "strings.quote",
    "substring",
    "timestamp",
    "toLower",
    "toString",
    "toUpper",
    "trim",
    "type",
    "uint",
    "upperAscii",
    "value",
];

type Args<'b, 'v> = Vec<CowVal<'b, 'v>>;
type Returned<'b, 'v> = Result<CowVal<'b, 'v>, ExecutionError>;

fn build_env() -> Result<Env, DeclarationError> {
    let mut env = Env::stdlib();

    // Every metered call goes through this (see `budget`); CEL source cannot name it.
    env.add_overload(
        super::budget::METER,
        "mantle_meter_dyn",
        vec![DYN_TYPE],
        super::budget::meter,
    )?;

    // Functions whose result can be far larger than their arguments, or whose work grows
    // faster than them, are declared again ahead of the library's: these check the size of
    // what they would build against the evaluation's budget first. Each takes `dyn`
    // arguments (or a `dyn` receiver), another signature than the library's, so both are
    // declared and the first declared wins the calls both accept.
    env.add_member_overload(
        "replace",
        "mantle_string_replace_dyn_dyn",
        STRING_TYPE,
        vec![DYN_TYPE, DYN_TYPE],
        replace,
    )?;
    env.add_member_overload(
        "replace",
        "mantle_string_replace_dyn_dyn_dyn",
        STRING_TYPE,
        vec![DYN_TYPE, DYN_TYPE, DYN_TYPE],
        replace,
    )?;
    env.add_member_overload("join", "mantle_dyn_join", DYN_TYPE, vec![], join)?;
    env.add_member_overload(
        "join",
        "mantle_dyn_join_dyn",
        DYN_TYPE,
        vec![DYN_TYPE],
        join,
    )?;
    env.add_member_overload(
        "distinct",
        "mantle_dyn_distinct",
        DYN_TYPE,
        vec![],
        distinct,
    )?;
    env.add_overload(
        "lists.range",
        "mantle_lists_range_dyn",
        vec![DYN_TYPE],
        range,
    )?;
    env.add_member_overload(
        "matches",
        "mantle_string_matches_dyn",
        STRING_TYPE,
        vec![DYN_TYPE],
        matches,
    )?;
    env.add_overload(
        "matches",
        "mantle_matches_string_dyn",
        vec![STRING_TYPE, DYN_TYPE],
        matches,
    )?;

    // The strings extension's `split` has no limit on the parts. An overload declared first wins
    // a call both accept, and one taking a `dyn` separator is another signature than the
    // extension's `(string, string)`: declared ahead of the extension, these shadow its `split`
    // without clashing with it.
    env.add_member_overload(
        "split",
        "mantle_string_split_dyn",
        STRING_TYPE,
        vec![DYN_TYPE],
        split,
    )?;
    env.add_member_overload(
        "split",
        "mantle_string_split_dyn_dyn",
        STRING_TYPE,
        vec![DYN_TYPE, DYN_TYPE],
        split_n,
    )?;
    env.add_extension(extensions::strings)?;
    env.add_extension(extensions::lists)?;
    env.add_extension(extensions::math)?;

    env.add_member_overload(
        "toLower",
        "mantle_string_to_lower",
        STRING_TYPE,
        vec![],
        to_lower,
    )?;
    env.add_member_overload(
        "toUpper",
        "mantle_string_to_upper",
        STRING_TYPE,
        vec![],
        to_upper,
    )?;
    env.add_overload(
        "parseInt",
        "mantle_parse_int_string",
        vec![STRING_TYPE],
        parse_int,
    )?;
    env.add_overload(
        "parseFloat",
        "mantle_parse_float_string",
        vec![STRING_TYPE],
        parse_float,
    )?;
    env.add_overload(
        "toString",
        "mantle_to_string_dyn",
        vec![DYN_TYPE],
        to_string,
    )?;
    env.add_overload(
        "jsonEncode",
        "mantle_json_encode_dyn",
        vec![DYN_TYPE],
        json_encode,
    )?;
    env.add_overload(
        "jsonDecode",
        "mantle_json_decode_string",
        vec![STRING_TYPE],
        json_decode,
    )?;
    env.add_overload("now", "mantle_now", vec![], now)?;
    env.add_overload(
        "parseTimestamp",
        "mantle_parse_timestamp_string",
        vec![STRING_TYPE],
        parse_timestamp,
    )?;
    env.add_overload(
        "formatTimestamp",
        "mantle_format_timestamp_timestamp_string",
        vec![TIMESTAMP_TYPE, STRING_TYPE],
        format_timestamp,
    )?;
    // The lists extension has the member `list.flatten()`: this is the global form Go Mantle's
    // workflows call, another signature than the member one.
    env.add_overload("flatten", "mantle_flatten_list", vec![LIST_TYPE], flatten)?;

    env.add_macro(Macro::global("default", 2, default_macro))?;
    env.add_macro(Macro::global_var_arg("default", |helper, _, args| {
        Err(default_arity_error(helper, args))
    }))?;
    Ok(env)
}

// ---------------------------------------------------------------------------------------------
// helpers

fn error(function: &str, message: impl std::fmt::Display) -> ExecutionError {
    ExecutionError::function_error(function, message)
}

/// `s` quoted for an error message, cut after [`QUOTED_CHARS`] characters.
fn quoted(s: &str) -> String {
    match s.char_indices().nth(QUOTED_CHARS) {
        Some((cut, _)) => format!("{:?}", format!("{}…", &s[..cut])),
        None => format!("{s:?}"),
    }
}

/// The string argument at `index`, which its overload declares as a `string`.
fn string_arg<'a>(
    function: &str,
    args: &'a [CowVal<'_, '_>],
    index: usize,
) -> Result<&'a str, ExecutionError> {
    args.get(index)
        .and_then(|arg| arg.downcast_ref::<CelString>())
        .map(|s| s.inner())
        .ok_or_else(|| error(function, format!("argument {} must be a string", index + 1)))
}

/// The argument at `index` as a [`Value`].
fn value_arg(
    function: &str,
    args: &[CowVal<'_, '_>],
    index: usize,
) -> Result<Value, ExecutionError> {
    let arg = args
        .get(index)
        .ok_or_else(|| error(function, format!("missing argument {}", index + 1)))?;
    Value::try_from(arg.as_ref())
}

fn owned<'b, 'v>(value: Value) -> Returned<'b, 'v> {
    let value: Box<dyn Val> = value.try_into()?;
    Ok(CowVal::Owned(value))
}

fn string<'b, 'v>(s: String) -> Returned<'b, 'v> {
    Ok(CowVal::owned(CelString::from(s)))
}

fn timestamp<'b, 'v>(function: &str, ts: DateTime<Utc>) -> Returned<'b, 'v> {
    if !(1..=9999).contains(&ts.year()) {
        return Err(error(
            function,
            "timestamp out of range: years 0001 to 9999 only",
        ));
    }
    Ok(CowVal::owned(CelTimestamp::from(ts.fixed_offset())))
}

// ---------------------------------------------------------------------------------------------
// strings

fn to_lower<'b, 'v>(args: Args<'b, 'v>) -> Returned<'b, 'v> {
    string(string_arg("toLower", &args, 0)?.to_lowercase())
}

fn to_upper<'b, 'v>(args: Args<'b, 'v>) -> Returned<'b, 'v> {
    string(string_arg("toUpper", &args, 0)?.to_uppercase())
}

/// `s.split(sep)`: every part.
fn split<'b, 'v>(args: Args<'b, 'v>) -> Returned<'b, 'v> {
    split_into(&args, None)
}

/// `s.split(sep, n)`: at most `n` parts, the last holding the unsplit rest; none when `n` is
/// zero, every part when it is negative (as the strings extension's `split`).
fn split_n<'b, 'v>(args: Args<'b, 'v>) -> Returned<'b, 'v> {
    let Some(n) = args.get(2).and_then(|arg| arg.downcast_ref::<CelInt>()) else {
        return Err(split_overload_error(&args));
    };
    // A negative count means no limit.
    split_into(&args, usize::try_from(*n.inner()).ok())
}

/// The error of a `split` call whose arguments are not `(string[, int])`, as if the overloads
/// were declared with those types.
fn split_overload_error(args: &[CowVal<'_, '_>]) -> ExecutionError {
    let types = args
        .iter()
        .map(|arg| arg.get_type().name().to_owned())
        .collect();
    ExecutionError::no_such_member_overload("split", types)
}

fn split_into<'b, 'v>(args: &[CowVal<'b, 'v>], limit: Option<usize>) -> Returned<'b, 'v> {
    let (Some(s), Some(sep)) = (
        args.first().and_then(|a| a.downcast_ref::<CelString>()),
        args.get(1).and_then(|a| a.downcast_ref::<CelString>()),
    ) else {
        return Err(split_overload_error(args));
    };
    let (s, sep) = (s.inner(), sep.inner());
    let limit = limit.unwrap_or(usize::MAX);
    let mut parts: Vec<Box<dyn Val>> = Vec::new();
    let mut push = |part: &str| {
        if parts.len() == MAX_SPLIT_PARTS {
            return Err(error(
                "split",
                format!("the result would have more than {MAX_SPLIT_PARTS} parts"),
            ));
        }
        parts.push(Box::new(CelString::from(part.to_owned())));
        Ok(())
    };
    if limit > 0 {
        if sep.is_empty() {
            // Between code points, as the strings extension does.
            let mut rest = s;
            let mut count = 0;
            while let Some(c) = rest.chars().next() {
                if count + 1 == limit {
                    break;
                }
                let (head, tail) = rest.split_at(c.len_utf8());
                push(head)?;
                count += 1;
                rest = tail;
            }
            if !rest.is_empty() {
                push(rest)?;
            }
        } else {
            for part in s.splitn(limit, sep) {
                push(part)?;
            }
        }
    }
    Ok(CowVal::owned(CelList::from(parts)))
}

/// The error of a call whose arguments are not of the types the library's overload takes.
fn overload_error(function: &str, member: bool, args: &[CowVal<'_, '_>]) -> ExecutionError {
    let types = args
        .iter()
        .map(|arg| arg.get_type().name().to_owned())
        .collect();
    if member {
        ExecutionError::no_such_member_overload(function, types)
    } else {
        ExecutionError::no_such_overload(function, types)
    }
}

/// `s.replace(old, new[, n])`: checks the size of the result before building it.
fn replace<'b, 'v>(args: Args<'b, 'v>) -> Returned<'b, 'v> {
    let strings: Option<Vec<&str>> = args
        .iter()
        .take(3)
        .map(|a| a.downcast_ref::<CelString>().map(|s| s.inner()))
        .collect();
    let (Some(strings), limit) = (
        strings.filter(|s| s.len() == 3),
        match args.get(3) {
            None => Some(None),
            Some(n) => n
                .downcast_ref::<CelInt>()
                .map(|n| usize::try_from(*n.inner()).ok()),
        },
    ) else {
        return Err(overload_error("replace", true, &args));
    };
    let Some(limit) = limit else {
        return Err(overload_error("replace", true, &args));
    };
    let (s, from, to) = (strings[0], strings[1], strings[2]);
    let limit = limit.unwrap_or(usize::MAX);
    let occurrences = if from.is_empty() {
        s.chars().count() + 1
    } else {
        s.matches(from).take(limit).count()
    }
    .min(limit);
    let size = (s.len() as u64)
        .saturating_add((occurrences as u64).saturating_mul(to.len() as u64))
        .saturating_sub((occurrences as u64).saturating_mul(from.len() as u64));
    super::budget::reserve(size)?;
    string(s.replacen(from, to, limit))
}

/// `list.join([sep])`: checks the size of the result before building it.
fn join<'b, 'v>(args: Args<'b, 'v>) -> Returned<'b, 'v> {
    let sep = match args.get(1) {
        None => "",
        Some(sep) => match sep.downcast_ref::<CelString>() {
            Some(sep) => sep.inner(),
            None => return Err(overload_error("join", true, &args)),
        },
    };
    let Some(list) = args.first().and_then(|l| l.as_iterable()) else {
        return Err(overload_error("join", true, &args));
    };
    let mut parts = Vec::new();
    let mut items = list.iter();
    while let Some(item) = items.next() {
        match item.downcast_ref::<CelString>() {
            Some(s) => parts.push(s.inner()),
            None => {
                return Err(error(
                    "join",
                    format!(
                        "the list holds a {}, not only strings",
                        item.get_type().name()
                    ),
                ));
            }
        }
    }
    let size = parts
        .iter()
        .map(|p| p.len() as u64)
        .sum::<u64>()
        .saturating_add((parts.len().saturating_sub(1) as u64).saturating_mul(sep.len() as u64));
    super::budget::reserve(size)?;
    string(parts.join(sep))
}

/// `list.distinct()`: the elements without repeats, first occurrences kept. Strings and
/// integers are told apart by hashing; other elements by comparing pairs, each comparison
/// charged to the evaluation's cost.
fn distinct<'b, 'v>(args: Args<'b, 'v>) -> Returned<'b, 'v> {
    let Some(list) = args.first().and_then(|l| l.as_iterable()) else {
        return Err(overload_error("distinct", true, &args));
    };
    let mut items = list.iter();
    let mut all: Vec<&dyn Val> = Vec::new();
    while let Some(item) = items.next() {
        all.push(item);
    }
    let mut unique: Vec<&dyn Val> = Vec::new();
    if all.iter().all(|i| i.downcast_ref::<CelString>().is_some()) {
        let mut seen = std::collections::HashSet::new();
        for item in all {
            if seen.insert(item.downcast_ref::<CelString>().map(|s| s.inner())) {
                unique.push(item);
            }
        }
    } else if all.iter().all(|i| i.downcast_ref::<CelInt>().is_some()) {
        let mut seen = std::collections::HashSet::new();
        for item in all {
            if seen.insert(item.downcast_ref::<CelInt>().map(|i| *i.inner())) {
                unique.push(item);
            }
        }
    } else {
        for item in all {
            let mut repeat = false;
            for seen in &unique {
                super::budget::charge(1)?;
                if item.equals(*seen) {
                    repeat = true;
                    break;
                }
            }
            if !repeat {
                unique.push(item);
            }
        }
    }
    Ok(CowVal::owned(CelList::from(
        unique
            .into_iter()
            .map(|item| item.clone_as_boxed())
            .collect::<Vec<_>>(),
    )))
}

/// `lists.range(n)`: `[0, 1, ..., n - 1]`, its size checked first.
fn range<'b, 'v>(args: Args<'b, 'v>) -> Returned<'b, 'v> {
    const MAX: i64 = 1_000_000;
    let Some(n) = args.first().and_then(|n| n.downcast_ref::<CelInt>()) else {
        return Err(overload_error("lists.range", false, &args));
    };
    let n = *n.inner();
    if !(0..=MAX).contains(&n) {
        return Err(error(
            "lists.range",
            format!("{n} is not between 0 and {MAX}"),
        ));
    }
    // An element costs its box and its slot.
    super::budget::reserve(n as u64 * 24)?;
    super::budget::charge(n as u64 / 64)?;
    Ok(CowVal::owned(CelList::from(
        (0..n)
            .map(|i| Box::new(CelInt::from(i)) as Box<dyn Val>)
            .collect::<Vec<_>>(),
    )))
}

/// The most compiled regular expressions one thread keeps.
const REGEX_CACHE: usize = 32;
/// The largest compiled regular expression `matches` builds.
const REGEX_SIZE_LIMIT: usize = 1024 * 1024;

/// `s.matches(re)` and `matches(s, re)`: RE2 syntax, a partial match. Compiled patterns are
/// kept (a loop calls it with one pattern many times) and bounded in size.
fn matches<'b, 'v>(args: Args<'b, 'v>) -> Returned<'b, 'v> {
    thread_local! {
        static CACHE: std::cell::RefCell<Vec<(String, regex::Regex)>> =
            const { std::cell::RefCell::new(Vec::new()) };
    }
    let (Some(s), Some(pattern)) = (
        args.first().and_then(|a| a.downcast_ref::<CelString>()),
        args.get(1).and_then(|a| a.downcast_ref::<CelString>()),
    ) else {
        return Err(overload_error("matches", true, &args));
    };
    let (s, pattern) = (s.inner(), pattern.inner());
    let cached = CACHE.with(|c| {
        c.borrow()
            .iter()
            .find(|(p, _)| p == pattern)
            .map(|(_, re)| re.clone())
    });
    let re = match cached {
        Some(re) => re,
        None => {
            let re = regex::RegexBuilder::new(pattern)
                .size_limit(REGEX_SIZE_LIMIT)
                .dfa_size_limit(REGEX_SIZE_LIMIT)
                .build()
                .map_err(|e| {
                    error(
                        "matches",
                        format!("{} is not a valid regex: {e}", quoted(pattern)),
                    )
                })?;
            CACHE.with(|c| {
                let mut c = c.borrow_mut();
                if c.len() >= REGEX_CACHE {
                    c.remove(0);
                }
                c.push((pattern.to_owned(), re.clone()));
            });
            re
        }
    };
    Ok(CowVal::owned(cel::common::types::CelBool::from(
        re.is_match(s),
    )))
}

// ---------------------------------------------------------------------------------------------
// numbers and conversions

fn parse_int<'b, 'v>(args: Args<'b, 'v>) -> Returned<'b, 'v> {
    let s = string_arg("parseInt", &args, 0)?;
    match s.parse::<i64>() {
        Ok(n) => Ok(CowVal::owned(CelInt::from(n))),
        Err(e) => {
            use std::num::IntErrorKind::{NegOverflow, PosOverflow};
            let reason = match e.kind() {
                PosOverflow | NegOverflow => "it is out of range for a 64-bit integer",
                _ => "it is not a base-10 integer",
            };
            Err(error(
                "parseInt",
                format!("cannot parse {}: {reason}", quoted(s)),
            ))
        }
    }
}

fn parse_float<'b, 'v>(args: Args<'b, 'v>) -> Returned<'b, 'v> {
    let s = string_arg("parseFloat", &args, 0)?;
    s.parse::<f64>()
        .map(|f| CowVal::owned(CelDouble::from(f)))
        .map_err(|_| {
            error(
                "parseFloat",
                format!("cannot parse {}: it is not a number", quoted(s)),
            )
        })
}

fn to_string<'b, 'v>(args: Args<'b, 'v>) -> Returned<'b, 'v> {
    let value = value_arg("toString", &args, 0)?;
    let text = match value {
        Value::String(s) => Arc::unwrap_or_clone(s),
        Value::Int(i) => i.to_string(),
        Value::UInt(u) => u.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null => "null".to_owned(),
        Value::Timestamp(ts) => format_rfc3339(&ts),
        Value::Duration(d) => format_duration(&d),
        Value::Bytes(b) => String::from_utf8(b.to_vec())
            .map_err(|_| error("toString", "bytes are not valid UTF-8"))?,
        other => encode_json("toString", &other)?,
    };
    string(text)
}

// ---------------------------------------------------------------------------------------------
// JSON

fn json_encode<'b, 'v>(args: Args<'b, 'v>) -> Returned<'b, 'v> {
    let value = value_arg("jsonEncode", &args, 0)?;
    string(encode_json("jsonEncode", &value)?)
}

fn encode_json(function: &str, value: &Value) -> Result<String, ExecutionError> {
    let json = to_json(function, value, 0)?;
    serde_json::to_string(&json).map_err(|e| error(function, format!("cannot encode JSON: {e}")))
}

fn to_json(
    function: &str,
    value: &Value,
    depth: usize,
) -> Result<serde_json::Value, ExecutionError> {
    use serde_json::Value as Json;
    if depth > MAX_JSON_ENCODE_DEPTH {
        return Err(error(
            function,
            format!("value nests lists and maps deeper than {MAX_JSON_ENCODE_DEPTH} levels"),
        ));
    }
    super::budget::charge(1)?;
    if let Value::String(s) = value {
        // As JSON it may be longer still (escapes): checked again once built.
        super::budget::reserve(s.len() as u64)?;
    }
    Ok(match value {
        Value::Null => Json::Null,
        Value::Bool(b) => Json::Bool(*b),
        Value::Int(i) => Json::from(*i),
        Value::UInt(u) => Json::from(*u),
        Value::Float(f) => serde_json::Number::from_f64(*f)
            .map(Json::Number)
            .ok_or_else(|| error(function, format!("cannot encode {f} as JSON")))?,
        Value::String(s) => Json::String(s.to_string()),
        Value::Timestamp(ts) => Json::String(format_rfc3339(ts)),
        Value::Duration(d) => Json::String(format_duration(d)),
        Value::List(items) => Json::Array(
            items
                .iter()
                .map(|item| to_json(function, item, depth + 1))
                .collect::<Result<_, _>>()?,
        ),
        Value::Map(map) => {
            // Sorted, so that equal maps always encode alike.
            let mut entries: Vec<(String, &Value)> = map
                .map
                .iter()
                .map(|(key, value)| {
                    let key = match key {
                        Key::String(s) => s.to_string(),
                        other => other.to_string(),
                    };
                    (key, value)
                })
                .collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            let mut object = serde_json::Map::new();
            for (key, value) in entries {
                let value = to_json(function, value, depth + 1)?;
                if object.insert(key.clone(), value).is_some() {
                    return Err(error(
                        function,
                        format!("two map keys both encode as the JSON key {}", quoted(&key)),
                    ));
                }
            }
            Json::Object(object)
        }
        // bytes as base64, as cel's own JSON conversion does
        Value::Bytes(_) => value
            .json()
            .map_err(|_| error(function, "cannot encode bytes as JSON"))?,
        other => {
            let type_name = match other {
                Value::Opaque(_) => "an optional or opaque value",
                Value::Struct(_) => "a struct",
                _ => "a function",
            };
            return Err(error(
                function,
                format!("cannot encode {type_name} as JSON"),
            ));
        }
    })
}

fn json_decode<'b, 'v>(args: Args<'b, 'v>) -> Returned<'b, 'v> {
    let s = string_arg("jsonDecode", &args, 0)?;
    if s.len() > MAX_JSON_DECODE_BYTES {
        return Err(error(
            "jsonDecode",
            format!(
                "input is {} bytes, over the limit of {MAX_JSON_DECODE_BYTES} bytes (1 MiB)",
                s.len()
            ),
        ));
    }
    // serde_json rejects trailing data, and documents nested deeper than 128 levels.
    let json: serde_json::Value =
        serde_json::from_str(s).map_err(|e| error("jsonDecode", format!("invalid JSON: {e}")))?;
    owned(json_to_value(json))
}

/// A JSON document as the CEL value `jsonDecode` makes of it: objects as maps, arrays as lists,
/// integers as `int` when they fit in an `i64` (else `double`).
///
/// Bind JSON variables (`inputs`, `steps`, `trigger`, ...) with it rather than with
/// `Context::add_variable`, which serializes a JSON `3` as the `uint` `3u`, so that `inputs.n + 1`
/// fails with "no matching overload".
pub fn json_to_value(json: serde_json::Value) -> Value {
    use serde_json::Value as Json;
    match json {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Bool(b),
        Json::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => Value::Int(i),
            (None, Some(f)) => Value::Float(f),
            // Unreachable without serde_json's `arbitrary_precision`.
            (None, None) => Value::Float(f64::NAN),
        },
        Json::String(s) => Value::String(Arc::new(s)),
        Json::Array(items) => Value::List(Arc::new(items.into_iter().map(json_to_value).collect())),
        Json::Object(object) => Value::Map(cel::objects::Map {
            map: Arc::new(
                object
                    .into_iter()
                    .map(|(key, value)| (Key::String(Arc::new(key)), json_to_value(value)))
                    .collect(),
            ),
        }),
    }
}

// ---------------------------------------------------------------------------------------------
// time

/// As CEL's `string(timestamp)`: UTC, `Z`, and the fraction of a second only when non-zero.
fn format_rfc3339(ts: &DateTime<chrono::FixedOffset>) -> String {
    let utc = ts.with_timezone(&Utc);
    let base = utc.format("%Y-%m-%dT%H:%M:%S");
    match utc.timestamp_subsec_nanos() % 1_000_000_000 {
        0 => format!("{base}Z"),
        nanos => {
            let fraction = format!("{nanos:09}");
            format!("{base}.{}Z", fraction.trim_end_matches('0'))
        }
    }
}

/// As CEL's `string(duration)`: seconds with their fraction, e.g. `1.5s`.
fn format_duration(d: &chrono::Duration) -> String {
    let secs = d.num_seconds();
    let nanos = d.subsec_nanos();
    let sign = if secs < 0 || nanos < 0 { "-" } else { "" };
    let (secs, nanos) = (secs.unsigned_abs(), nanos.unsigned_abs());
    if nanos == 0 {
        format!("{sign}{secs}s")
    } else {
        let fraction = format!("{nanos:09}");
        format!("{sign}{secs}.{}s", fraction.trim_end_matches('0'))
    }
}

fn now<'b, 'v>(_: Args<'b, 'v>) -> Returned<'b, 'v> {
    timestamp("now", Utc::now())
}

fn parse_timestamp<'b, 'v>(args: Args<'b, 'v>) -> Returned<'b, 'v> {
    let s = string_arg("parseTimestamp", &args, 0)?;
    let parsed = DateTime::parse_from_rfc3339(s)
        .map(|ts| ts.with_timezone(&Utc))
        .or_else(|_| {
            NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f").map(|ts| ts.and_utc())
        })
        .or_else(|_| {
            NaiveDate::parse_from_str(s, "%Y-%m-%d")
                .map(|date| date.and_time(chrono::NaiveTime::MIN).and_utc())
        })
        .map_err(|_| {
            error(
                "parseTimestamp",
                format!(
                    "cannot parse {}: expected RFC 3339 (2024-01-31T09:30:00Z), \
                     YYYY-MM-DDTHH:MM:SS (UTC) or YYYY-MM-DD (UTC)",
                    quoted(s)
                ),
            )
        })?;
    timestamp("parseTimestamp", parsed)
}

fn format_timestamp<'b, 'v>(args: Args<'b, 'v>) -> Returned<'b, 'v> {
    const FUNCTION: &str = "formatTimestamp";
    let ts = match value_arg(FUNCTION, &args, 0)? {
        Value::Timestamp(ts) => ts.with_timezone(&Utc),
        _ => return Err(error(FUNCTION, "argument 1 must be a timestamp")),
    };
    let layout = string_arg(FUNCTION, &args, 1)?;
    let items: Vec<Item<'_>> = StrftimeItems::new(layout).collect();
    if items.iter().any(|item| matches!(item, Item::Error)) {
        return Err(error(
            FUNCTION,
            format!("invalid strftime layout {}", quoted(layout)),
        ));
    }
    let mut formatted = String::new();
    write!(formatted, "{}", ts.format_with_items(items.iter())).map_err(|_| {
        error(
            FUNCTION,
            format!("cannot format with layout {}", quoted(layout)),
        )
    })?;
    string(formatted)
}

// ---------------------------------------------------------------------------------------------
// lists

fn flatten<'b, 'v>(args: Args<'b, 'v>) -> Returned<'b, 'v> {
    let Value::List(items) = value_arg("flatten", &args, 0)? else {
        return Err(error("flatten", "argument 1 must be a list"));
    };
    let mut flat = Vec::with_capacity(items.len());
    for item in items.iter() {
        match item {
            Value::List(inner) => flat.extend(inner.iter().cloned()),
            other => flat.push(other.clone()),
        }
    }
    owned(Value::List(Arc::new(flat)))
}

// ---------------------------------------------------------------------------------------------
// default(value, fallback)

/// Expands `default(value, fallback)` to
/// `!@not_strictly_false(value == null) ? value : fallback`.
///
/// cel evaluates a function's arguments before calling it, an error in one failing the call: only
/// a macro sees `value` unevaluated. `@not_strictly_false(x)`, what `all()` and `exists()` guard
/// their loops with, is `true` when `x` is `true` or fails, so the condition holds exactly when
/// `value` evaluates, to anything but `null`. `value` is then evaluated a second time for the
/// result, a cost only of the calls that don't fall back.
fn default_macro(
    helper: &mut MacroExprHelper<'_>,
    _target: &mut Option<IdedExpr>,
    args: &mut Vec<IdedExpr>,
) -> Result<Option<IdedExpr>, ParseError> {
    let (Some(fallback), Some(value)) = (args.pop(), args.pop()) else {
        // The macro is for two arguments only.
        return Err(helper.new_error(0, "default() takes 2 arguments: (value, fallback)"));
    };
    // `value` is copied: bounding it keeps `default(default(default(..)))` from doubling the
    // program at each level.
    if !fits(&value, &mut { MAX_DEFAULT_VALUE_NODES }) {
        return Err(helper.new_error(
            value.id,
            format!(
                "default(): the value expression is too large to guard \
                 (over {MAX_DEFAULT_VALUE_NODES} nodes): simplify it or nest fewer default() calls"
            ),
        ));
    }
    let call = |helper: &mut MacroExprHelper<'_>, function: &str, args: Vec<IdedExpr>| {
        helper.next_expr(Expr::Call(CallExpr {
            func_name: function.to_owned(),
            target: None,
            args,
        }))
    };
    let result = value.clone();
    let null = helper.next_expr(Expr::Literal(LiteralValue::Null));
    let is_null = call(helper, operators::EQUALS, vec![value, null]);
    let null_or_failed = call(helper, operators::NOT_STRICTLY_FALSE, vec![is_null]);
    let usable = call(helper, operators::LOGICAL_NOT, vec![null_or_failed]);
    Ok(Some(call(
        helper,
        operators::CONDITIONAL,
        vec![usable, result, fallback],
    )))
}

/// Whether `expr` has at most `budget` nodes, counting them off `budget`.
fn fits(expr: &IdedExpr, budget: &mut usize) -> bool {
    use cel::common::ast::EntryExpr;
    if *budget == 0 {
        return false;
    }
    *budget -= 1;
    match &expr.expr {
        Expr::Unspecified | Expr::Ident(_) | Expr::Literal(_) => true,
        Expr::Select(select) => fits(&select.operand, budget),
        Expr::Call(call) => {
            call.target
                .as_deref()
                .is_none_or(|target| fits(target, budget))
                && call.args.iter().all(|arg| fits(arg, budget))
        }
        Expr::List(list) => list.elements.iter().all(|element| fits(element, budget)),
        Expr::Map(map) => map.entries.iter().all(|entry| match &entry.expr {
            EntryExpr::MapEntry(entry) => fits(&entry.key, budget) && fits(&entry.value, budget),
            EntryExpr::StructField(field) => fits(&field.value, budget),
        }),
        Expr::Struct(strct) => strct.entries.iter().all(|entry| match &entry.expr {
            EntryExpr::MapEntry(entry) => fits(&entry.key, budget) && fits(&entry.value, budget),
            EntryExpr::StructField(field) => fits(&field.value, budget),
        }),
        Expr::Comprehension(c) => [
            &c.iter_range,
            &c.accu_init,
            &c.loop_cond,
            &c.loop_step,
            &c.result,
        ]
        .into_iter()
        .all(|part| fits(part, budget)),
    }
}

/// The parse error of a `default(..)` without exactly two arguments, which would otherwise be an
/// undeclared function at run time.
fn default_arity_error(helper: &MacroExprHelper<'_>, args: &[IdedExpr]) -> ParseError {
    let at = args.first().map_or(0, |arg| arg.id);
    helper.new_error(
        at,
        format!(
            "default() takes 2 arguments: (value, fallback), got {}",
            args.len()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use cel::Context;

    /// Why [`eval`] gave no value: the expression did not parse (macros expand then), or
    /// its evaluation failed.
    #[derive(Debug, thiserror::Error)]
    enum Failure {
        #[error("parse: {0}")]
        Parse(#[source] cel::ParseErrors),
        #[error("{0}")]
        Run(#[from] cel::ExecutionError),
    }

    /// Evaluates `expr` with `inputs` (a map without `missing`) and `steps` (`steps.a.output` a
    /// map without `nope`) bound, as the engine binds them.
    fn eval(expr: &str) -> Result<Value, Failure> {
        let env = env();
        let program = env.compile(expr).map_err(Failure::Parse)?;
        let mut context = Context::with_env(env);
        let inputs = serde_json::json!({"name": "ada", "count": 3, "empty": null});
        let steps = serde_json::json!({"a": {"output": {"ok": true, "items": [1, 2]}}});
        context.add_variable_from_value("inputs", json_to_value(inputs));
        context.add_variable_from_value("steps", json_to_value(steps));
        Ok(program.execute(&context)?)
    }

    /// Whether `result` failed as `name` is not declared.
    fn is_undeclared(result: &Result<Value, Failure>, name: &str) -> bool {
        matches!(
            result,
            Err(Failure::Run(cel::ExecutionError::UndeclaredReference(n))) if n.as_str() == name
        )
    }

    #[track_caller]
    fn assert_eval(expr: &str, expected: impl Into<Value>) {
        match eval(expr) {
            Ok(value) => assert_eq!(value, expected.into(), "{expr}"),
            Err(err) => panic!("{expr}: {err}"),
        }
    }

    #[track_caller]
    fn assert_true(expr: &str) {
        assert_eval(expr, true);
    }

    #[track_caller]
    fn assert_error(expr: &str, message: &str) {
        match eval(expr) {
            Err(err) => assert_eq!(err.to_string(), message, "{expr}"),
            Ok(value) => panic!("{expr}: {value:?}, not an error"),
        }
    }

    fn list(items: &[&str]) -> Value {
        Value::List(Arc::new(items.iter().map(|s| Value::from(*s)).collect()))
    }

    #[test]
    fn json_variables_bound_with_json_to_value_hold_ints() {
        let json = serde_json::json!({"n": 3, "big": 18446744073709551615u64, "f": 1.5});
        let program = env()
            .compile("[inputs.n + 1, type(inputs.big), inputs.f]")
            .unwrap();

        let mut context = Context::with_env(env());
        context.add_variable_from_value("inputs", json_to_value(json.clone()));
        assert_eq!(
            program.execute(&context),
            Ok(Value::List(Arc::new(vec![
                Value::Int(4),
                Value::String(Arc::new("double".to_owned())),
                Value::Float(1.5),
            ])))
        );

        // what `add_variable` makes of the same JSON
        let mut context = Context::with_env(env());
        context.add_variable("inputs", json).unwrap();
        assert_eq!(
            program.execute(&context).map_err(|e| e.to_string()),
            Err("Unsupported binary operator 'add': UInt(3), Int(1)".to_owned())
        );
    }

    #[test]
    fn the_env_is_built_once() {
        assert!(Arc::ptr_eq(&env(), &env()));
    }

    #[test]
    fn to_lower_and_to_upper_are_unicode() {
        assert_eval("'Hello World'.toLower()", "hello world");
        assert_eval("'Hello World'.toUpper()", "HELLO WORLD");
        assert_eval("'ÉTÉ'.toLower()", "été");
        assert_eval("'straße'.toUpper()", "STRASSE");
        assert_eval("''.toLower()", "");
        assert_error(
            "1.toLower()",
            "found no matching overload for 'toLower' applied to 'int.()'",
        );
    }

    #[test]
    fn trim_and_replace() {
        assert_eval("'  hi  '.trim()", "hi");
        assert_eval("'a-b-c'.replace('-', '+')", "a+b+c");
        assert_eval("'aaa'.replace('a', 'bb')", "bbbbbb");
        assert_eval("'a-b-c'.replace('-', '+', 1)", "a+b-c");
    }

    #[test]
    fn split_returns_every_part() {
        assert_eval("'a,b,c'.split(',')", list(&["a", "b", "c"]));
        assert_eval("'a,b,,c'.split(',')", list(&["a", "b", "", "c"]));
        assert_eval("'abc'.split('')", list(&["a", "b", "c"]));
        assert_eval("''.split(',')", list(&[""]));
        assert_eval("''.split('')", list(&[]));
        assert_eval("'a,b,c'.split(',', 2)", list(&["a", "b,c"]));
        assert_eval("'a,b,c'.split(',', 0)", list(&[]));
        assert_eval("'a,b,c'.split(',', -1)", list(&["a", "b", "c"]));
        assert_eval("'abc'.split('', 2)", list(&["a", "bc"]));
        assert_eval("size('x'.split('y'))", 1);
    }

    #[test]
    fn split_fails_past_the_part_limit() {
        let at_limit = format!("size('{}'.split(','))", ",".repeat(MAX_SPLIT_PARTS - 1));
        assert_eval(&at_limit, MAX_SPLIT_PARTS as i64);
        let message = "Error executing function 'split': \
                       the result would have more than 10000 parts";
        let over = format!("'{}'.split(',')", ",".repeat(MAX_SPLIT_PARTS));
        assert_error(&over, message);
        let over = format!("'{}'.split('')", "x".repeat(MAX_SPLIT_PARTS + 1));
        assert_error(&over, message);
        let over = format!("'{}'.split(',', -1)", ",".repeat(MAX_SPLIT_PARTS));
        assert_error(&over, message);
        // a limit below the cap is honoured whatever the input
        let capped = format!("size('{}'.split(',', 3))", ",".repeat(MAX_SPLIT_PARTS));
        assert_eval(&capped, 3);
    }

    #[test]
    fn split_rejects_other_types_as_an_overload_would() {
        assert_error(
            "'a'.split(1)",
            "found no matching overload for 'split' applied to 'string.(int)'",
        );
        assert_error(
            "'a'.split(',', 'x')",
            "found no matching overload for 'split' applied to 'string.(string, string)'",
        );
    }

    #[test]
    fn the_strings_extension_stays_available() {
        assert_eval("'TacoCat'.lowerAscii()", "tacocat");
        assert_eval("'TacoCat'.upperAscii()", "TACOCAT");
        assert_eval("'hello'.indexOf('l')", 2);
        assert_eval("'hello'.lastIndexOf('l')", 3);
        assert_eval("'hello'.substring(1, 3)", "el");
        assert_eval("'hello'.charAt(1)", "e");
        assert_eval("['a', 'b'].join('-')", "a-b");
        assert_eval("'%s is %d'.format(['x', 3])", "x is 3");
        assert_eval("'abc'.reverse()", "cba");
        assert_eval("strings.quote('a\"b')", "\"a\\\"b\"");
    }

    #[test]
    fn the_lists_and_math_extensions_are_available() {
        assert_eval(
            "[[1], [2, [3]]].flatten()",
            Value::List(Arc::new(vec![
                Value::Int(1),
                Value::Int(2),
                Value::List(Arc::new(vec![Value::Int(3)])),
            ])),
        );
        assert_true("[3, 1, 2].sort() == [1, 2, 3]");
        assert_true("[1, 2, 1].distinct() == [1, 2]");
        assert_true("lists.range(3) == [0, 1, 2]");
        assert_true("[1, 2, 3, 4].slice(1, 3) == [2, 3]");
        assert_true("['bb', 'a'].sortBy(s, size(s)) == ['a', 'bb']");
        assert_eval("math.greatest(1, 5, 3)", 5);
        assert_eval("math.least([4, 2])", 2);
        assert_eval("math.ceil(1.2)", 2.0);
        assert_eval("math.abs(-3)", 3);
        assert_eval("math.sqrt(16)", 4.0);
    }

    #[test]
    fn parse_int() {
        assert_eval("parseInt('42')", 42);
        assert_eval("parseInt('-7')", -7);
        assert_eval("parseInt('+7')", 7);
        assert_eval("parseInt('9223372036854775807')", i64::MAX);
        assert_error(
            "parseInt('12abc')",
            "Error executing function 'parseInt': cannot parse \"12abc\": \
             it is not a base-10 integer",
        );
        assert_error(
            "parseInt(' 1')",
            "Error executing function 'parseInt': cannot parse \" 1\": \
             it is not a base-10 integer",
        );
        assert_error(
            "parseInt('')",
            "Error executing function 'parseInt': cannot parse \"\": \
             it is not a base-10 integer",
        );
        assert_error(
            "parseInt('9223372036854775808')",
            "Error executing function 'parseInt': cannot parse \"9223372036854775808\": \
             it is out of range for a 64-bit integer",
        );
        assert_error(
            "parseInt(1)",
            "found no matching overload for 'parseInt' applied to '(int)'",
        );
    }

    #[test]
    fn parse_int_quotes_a_long_input_cut_short() {
        let long = "x".repeat(100);
        let message = format!(
            "Error executing function 'parseInt': cannot parse \"{}…\": \
             it is not a base-10 integer",
            "x".repeat(QUOTED_CHARS)
        );
        assert_error(&format!("parseInt('{long}')"), &message);
    }

    #[test]
    fn parse_float() {
        assert_eval("parseFloat('2.5')", 2.5);
        assert_eval("parseFloat('-2')", -2.0);
        assert_eval("parseFloat('1e3')", 1000.0);
        assert_true("math.isNaN(parseFloat('NaN'))");
        assert_error(
            "parseFloat('abc')",
            "Error executing function 'parseFloat': cannot parse \"abc\": it is not a number",
        );
    }

    #[test]
    fn to_string() {
        assert_eval("toString('as-is')", "as-is");
        assert_eval("toString(42)", "42");
        assert_eval("toString(42u)", "42");
        assert_eval("toString(1.5)", "1.5");
        assert_eval("toString(2.0)", "2");
        assert_eval("toString(true)", "true");
        assert_eval("toString(null)", "null");
        assert_eval("toString([1, 'a'])", "[1,\"a\"]");
        assert_eval("toString({'b': 1, 'a': [true]})", "{\"a\":[true],\"b\":1}");
        assert_eval(
            "toString(timestamp('2024-01-31T09:30:00Z'))",
            "2024-01-31T09:30:00Z",
        );
        assert_eval("toString(duration('90s'))", "90s");
        assert_eval("toString(b'hi')", "hi");
        assert_eval("'n=' + toString(inputs.count)", "n=3");
        assert_error(
            "toString(b'\\xff')",
            "Error executing function 'toString': bytes are not valid UTF-8",
        );
    }

    #[test]
    fn json_encode() {
        assert_eval(
            "jsonEncode({'name': 'ada', 'tags': ['x', 'y'], 'n': 1})",
            "{\"n\":1,\"name\":\"ada\",\"tags\":[\"x\",\"y\"]}",
        );
        assert_eval("jsonEncode('a\"b')", "\"a\\\"b\"");
        assert_eval("jsonEncode(null)", "null");
        assert_eval("jsonEncode(1.5)", "1.5");
        assert_eval("jsonEncode(18446744073709551615u)", "18446744073709551615");
        assert_eval(
            "jsonEncode({1: 'a', true: 'b'})",
            "{\"1\":\"a\",\"true\":\"b\"}",
        );
        assert_eval(
            "jsonEncode(timestamp('2024-01-31T09:30:00.25+02:00'))",
            "\"2024-01-31T07:30:00.25Z\"",
        );
        assert_eval("jsonEncode(duration('1.5s'))", "\"1.5s\"");
        assert_eval("jsonEncode(duration('-2m'))", "\"-120s\"");
        assert_eval("jsonEncode(b'hi')", "\"aGk=\"");
        assert_eval(
            "jsonEncode(steps.a.output)",
            "{\"items\":[1,2],\"ok\":true}",
        );
        assert_error(
            "jsonEncode({1: 'a', '1': 'b'})",
            "Error executing function 'jsonEncode': two map keys both encode as the JSON key \"1\"",
        );
        assert_error(
            "jsonEncode(double('NaN'))",
            "Error executing function 'jsonEncode': cannot encode NaN as JSON",
        );
        assert_error(
            "jsonEncode(optional.of(1))",
            "Error executing function 'jsonEncode': cannot encode an optional or opaque value as JSON",
        );
    }

    #[test]
    fn json_decode() {
        assert_eval("jsonDecode('{\"a\": [1, 2.5, \"x\", null, true]}').a[0]", 1);
        assert_true(
            "jsonDecode('{\"a\": [1, 2.5, \"x\", null, true]}') == {'a': [1, 2.5, 'x', null, true]}",
        );
        assert_true("type(jsonDecode('1')) == int");
        assert_true("type(jsonDecode('1.0')) == double");
        assert_eval("jsonDecode('9223372036854775807')", i64::MAX);
        assert_eval(
            "jsonDecode('9223372036854775808')",
            9_223_372_036_854_775_808.0,
        );
        assert_eval("jsonDecode('-9223372036854775808')", i64::MIN);
        assert_eval("jsonDecode('\"s\"')", "s");
        assert_eval("jsonDecode(' [] ')", Value::List(Arc::new(vec![])));
        assert_eval("jsonDecode('{\"k\": {\"n\": 2}}').k.n", 2);
        assert_true("jsonDecode(jsonEncode({'a': [1, 'b']})) == {'a': [1, 'b']}");
        assert_error(
            "jsonDecode('{\"a\": 1} x')",
            "Error executing function 'jsonDecode': invalid JSON: \
             trailing characters at line 1 column 10",
        );
        assert_error(
            "jsonDecode('')",
            "Error executing function 'jsonDecode': invalid JSON: \
             EOF while parsing a value at line 1 column 0",
        );
        assert_error(
            "jsonDecode('{a: 1}')",
            "Error executing function 'jsonDecode': invalid JSON: \
             key must be a string at line 1 column 2",
        );
    }

    #[test]
    fn json_decode_caps_its_input_and_nesting() {
        let at_limit = format!("\"{}\"", "x".repeat(MAX_JSON_DECODE_BYTES - 2));
        let mut context = Context::with_env(env());
        context.add_variable_from_value("doc", at_limit);
        let program = env().compile("size(jsonDecode(doc))").unwrap();
        assert_eq!(
            program.execute(&context),
            Ok(Value::Int((MAX_JSON_DECODE_BYTES - 2) as i64))
        );

        context.add_variable_from_value("doc", format!("{} ", "1".repeat(MAX_JSON_DECODE_BYTES)));
        let program = env().compile("jsonDecode(doc)").unwrap();
        assert_eq!(
            program.execute(&context).map_err(|e| e.to_string()),
            Err(
                "Error executing function 'jsonDecode': input is 1048577 bytes, \
                 over the limit of 1048576 bytes (1 MiB)"
                    .to_owned()
            )
        );

        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        context.add_variable_from_value("doc", deep);
        let error = program.execute(&context).unwrap_err().to_string();
        assert!(error.contains("recursion limit exceeded"), "{error}");
    }

    #[test]
    fn default_falls_back_on_a_missing_key_or_field() {
        assert_eval("default(inputs.missing, 'x')", "x");
        assert_eval("default(steps.a.output.nope, 0)", 0);
        assert_eval("default(steps.b.output, 'no step')", "no step");
        assert_eval("default(inputs['missing'], 'x')", "x");
        assert_eval("default([1, 2][5], -1)", -1);
        assert_eval("default(undeclared, 'x')", "x");
        assert_eval("default(undeclared.field, 'x')", "x");
    }

    #[test]
    fn default_falls_back_on_null_or_an_error() {
        assert_eval("default(null, 'x')", "x");
        assert_eval("default(inputs.empty, 'x')", "x");
        assert_eval("default(1 / 0, 7)", 7);
        assert_eval("default(parseInt('nope'), 0)", 0);
        assert_eval("default(jsonDecode('{').a, 'bad')", "bad");
    }

    #[test]
    fn default_keeps_a_present_value() {
        assert_eval("default(inputs.name, 'x')", "ada");
        assert_eval("default(steps.a.output.ok, false)", true);
        assert_eval("default(inputs.count, 0) + 1", 4);
        assert_eval("default(0, 1)", 0);
        assert_eval("default('', 'x')", "");
        assert_eval("default(false, true)", false);
        assert_true("default(steps.a.output.items, []) == [1, 2]");
        assert_true("default({'k': 1}, {}) == {'k': 1}");
        // nested, in a comprehension, and inside other calls
        assert_eval("default(inputs.missing, default(inputs.other, 'z'))", "z");
        assert_true("[1, 2].map(i, default(steps.a.output.items[i], 0)) == [2, 0]");
        assert_eval("default(inputs.missing, 'World').toUpper()", "WORLD");
    }

    #[test]
    fn default_nests_in_its_value_too() {
        assert_eval("default(default(inputs.missing, null), 'z')", "z");
        assert_eval("default(default(inputs.missing, inputs.name), 'z')", "ada");
        let nested = |depth: usize| {
            format!(
                "{}inputs.missing{}",
                "default(".repeat(depth),
                ", 1)".repeat(depth)
            )
        };
        assert_eval(&nested(5), 1);
        // (deeper nesting overflows the 2 MiB stack of a test thread in cel's debug-built parser)
        let Err(Failure::Parse(message)) = eval(&nested(7)) else {
            panic!("a guard too large is refused as the macro expands");
        };
        let message = message.to_string();
        assert!(
            message
                .contains("default(): the value expression is too large to guard (over 500 nodes)"),
            "{message}"
        );
    }

    #[test]
    fn default_propagates_an_error_of_its_fallback() {
        assert_error(
            "default(inputs.missing, 1 / 0)",
            "Division by zero of Int(1)",
        );
    }

    #[test]
    fn default_takes_two_arguments() {
        let Err(Failure::Parse(message)) = eval("default(1)") else {
            panic!("default()'s arity is checked as the macro expands");
        };
        let message = message.to_string();
        assert!(
            message.contains("default() takes 2 arguments: (value, fallback), got 1"),
            "{message}"
        );
        let message = eval("default(1, 2, 3)").unwrap_err().to_string();
        assert!(message.contains("got 3"), "{message}");
    }

    #[test]
    fn now_is_a_current_utc_timestamp() {
        let before = Utc::now();
        let Ok(Value::Timestamp(ts)) = eval("now()") else {
            panic!("now() is not a timestamp");
        };
        assert!(ts >= before && ts <= Utc::now(), "{ts}");
        assert_eq!(ts.offset().local_minus_utc(), 0);
        assert_true("now() > timestamp('2024-01-01T00:00:00Z')");
        assert_true("now() - now() < duration('1s')");
    }

    #[test]
    fn parse_timestamp_accepts_three_forms() {
        assert_true("parseTimestamp('2024-01-31T09:30:00Z') == timestamp('2024-01-31T09:30:00Z')");
        assert_true(
            "parseTimestamp('2024-01-31T09:30:00.5+02:00') == timestamp('2024-01-31T07:30:00.5Z')",
        );
        assert_true("parseTimestamp('2024-01-31T09:30:00') == timestamp('2024-01-31T09:30:00Z')");
        assert_true(
            "parseTimestamp('2024-01-31T09:30:00.123') == timestamp('2024-01-31T09:30:00.123Z')",
        );
        assert_true("parseTimestamp('2024-01-31') == timestamp('2024-01-31T00:00:00Z')");
        assert_eval("parseTimestamp('2024-01-31').getFullYear()", 2024);
        assert_eval("parseTimestamp('2024-01-31T09:30:00+02:00').getHours()", 7);
        assert_eval(
            "string(parseTimestamp('2024-01-31'))",
            "2024-01-31T00:00:00Z",
        );
    }

    #[test]
    fn parse_timestamp_rejects_anything_else() {
        let message = |input: &str| {
            format!(
                "Error executing function 'parseTimestamp': cannot parse \"{input}\": \
                 expected RFC 3339 (2024-01-31T09:30:00Z), YYYY-MM-DDTHH:MM:SS (UTC) \
                 or YYYY-MM-DD (UTC)"
            )
        };
        for input in [
            "yesterday",
            "2024-13-01",
            "2024-01-31 09:30",
            "31/01/2024",
            "",
        ] {
            assert_error(&format!("parseTimestamp('{input}')"), &message(input));
        }
        assert_error(
            "parseTimestamp('+10000-01-01')",
            "Error executing function 'parseTimestamp': \
             timestamp out of range: years 0001 to 9999 only",
        );
    }

    #[test]
    fn format_timestamp_uses_strftime_in_utc() {
        assert_eval(
            "formatTimestamp(timestamp('2024-01-31T09:30:00Z'), '%Y-%m-%d')",
            "2024-01-31",
        );
        assert_eval(
            "formatTimestamp(timestamp('2024-01-31T23:30:00-02:00'), '%Y-%m-%d %H:%M')",
            "2024-02-01 01:30",
        );
        assert_eval(
            "formatTimestamp(parseTimestamp('2024-03-05'), '%a %d %b %Y, week %V')",
            "Tue 05 Mar 2024, week 10",
        );
        assert_eval(
            "formatTimestamp(parseTimestamp('2024-03-05'), 'plain')",
            "plain",
        );
        assert_eval("formatTimestamp(parseTimestamp('2024-03-05'), '')", "");
        assert_error(
            "formatTimestamp(now(), '%Y-%Q')",
            "Error executing function 'formatTimestamp': invalid strftime layout \"%Y-%Q\"",
        );
        assert_error(
            "formatTimestamp(now(), '%')",
            "Error executing function 'formatTimestamp': invalid strftime layout \"%\"",
        );
        assert_error(
            "formatTimestamp('2024-01-01', '%Y')",
            "found no matching overload for 'formatTimestamp' applied to '(string, string)'",
        );
    }

    #[test]
    fn the_standard_time_functions_remain() {
        assert_eval("timestamp('2024-01-31T09:30:00Z').getMonth()", 0);
        assert_eval("timestamp('2024-01-31T09:30:00Z').getDayOfMonth()", 30);
        assert_eval("duration('1h30m').getMinutes()", 90);
        assert_true(
            "timestamp('2024-01-31T09:30:00Z') + duration('1h') > timestamp('2024-01-31T10:00:00Z')",
        );
    }

    #[test]
    fn flatten_goes_one_level_deep() {
        assert_true("flatten([[1, 2], [3], [], 4]) == [1, 2, 3, 4]");
        assert_true("flatten([[1, [2]], [[3]]]) == [1, [2], [3]]");
        assert_true("flatten([]) == []");
        assert_true("flatten([{'a': [1]}]) == [{'a': [1]}]");
        assert_error(
            "flatten('ab')",
            "found no matching overload for 'flatten' applied to '(string)'",
        );
    }

    /// The examples of docs/expressions-functions.md: each expression, and its documented result
    /// as a CEL expression.
    const DOCUMENTED_EXAMPLES: &[(&str, &str)] = &[
        ("'Hello World'.toLower()", "'hello world'"),
        ("'Hello World'.toUpper()", "'HELLO WORLD'"),
        ("'  hi  '.trim()", "'hi'"),
        ("'a-b-c'.replace('-', '+')", "'a+b+c'"),
        ("'a,b,c'.split(',')", "['a', 'b', 'c']"),
        ("parseInt('42')", "42"),
        ("parseFloat('2.5')", "2.5"),
        ("toString([1, 'a'])", "'[1,\"a\"]'"),
        (
            "jsonEncode({'name': 'ada', 'tags': ['x', 'y'], 'n': 1})",
            "'{\"n\":1,\"name\":\"ada\",\"tags\":[\"x\",\"y\"]}'",
        ),
        ("jsonDecode('{\"a\": [1, 2.5]}').a[1]", "2.5"),
        ("default(inputs.missing, 'x')", "'x'"),
        ("default(steps.a.output.nope, 0)", "0"),
        ("default(inputs.name, 'x')", "'ada'"),
        ("now() > timestamp('2024-01-01T00:00:00Z')", "true"),
        (
            "string(parseTimestamp('2024-01-31'))",
            "'2024-01-31T00:00:00Z'",
        ),
        (
            "formatTimestamp(timestamp('2024-01-31T09:30:00Z'), '%Y-%m-%d')",
            "'2024-01-31'",
        ),
        ("flatten([[1, 2], [3], 4])", "[1, 2, 3, 4]"),
        ("size('abc')", "3"),
        ("size([1, 2])", "2"),
        ("'workflow'.contains('flow')", "true"),
        ("'deploy-prod'.startsWith('deploy')", "true"),
        ("'report.csv'.endsWith('.csv')", "true"),
        ("'v1.2.3'.matches('^v[0-9]+')", "true"),
        ("'b' in ['a', 'b']", "true"),
        ("has(steps.a.output.ok)", "true"),
        ("[1, 2, 3].all(x, x > 0)", "true"),
        ("[1, 2, 3].exists(x, x > 2)", "true"),
        ("[1, 2, 3].exists_one(x, x > 2)", "true"),
        ("[1, 2, 3].existsOne(x, x > 2)", "true"),
        ("[1, 2, 3].map(x, x * 2)", "[2, 4, 6]"),
        ("[1, 2, 3].filter(x, x > 1)", "[2, 3]"),
        ("int('42')", "42"),
        ("uint(42)", "42u"),
        ("double('2.5')", "2.5"),
        ("string(1.5)", "'1.5'"),
        ("bool('true')", "true"),
        ("bytes('hi')", "b'hi'"),
        ("type('a') == string", "true"),
        ("dyn(1) == 1", "true"),
        (
            "timestamp('2024-01-31T09:30:00Z') + duration('1h')",
            "timestamp('2024-01-31T10:30:00Z')",
        ),
        ("duration('1h30m')", "duration('5400s')"),
        ("timestamp('2024-01-31T09:30:00Z').getFullYear()", "2024"),
        ("timestamp('2024-01-31T09:30:00Z').getMonth()", "0"),
        ("timestamp('2024-01-31T09:30:00Z').getDayOfMonth()", "30"),
        ("timestamp('2024-01-31T09:30:00Z').getDate()", "31"),
        ("timestamp('2024-01-31T09:30:00Z').getDayOfWeek()", "3"),
        (
            "timestamp('2024-01-31T09:30:00Z').getHours('Europe/Paris')",
            "10",
        ),
        ("duration('1h30m').getMinutes()", "90"),
        ("{'a': 1}.?b.orValue(0)", "0"),
        ("'TacoCat'.lowerAscii()", "'tacocat'"),
        ("'TacoCat'.upperAscii()", "'TACOCAT'"),
        ("'hello'.indexOf('l')", "2"),
        ("'hello'.lastIndexOf('l')", "3"),
        ("'hello'.substring(1, 3)", "'el'"),
        ("'hello'.charAt(1)", "'e'"),
        ("['a', 'b'].join('-')", "'a-b'"),
        ("'%s is %d'.format(['x', 3])", "'x is 3'"),
        ("'abc'.reverse()", "'cba'"),
        ("strings.quote('hi')", "'\"hi\"'"),
        ("'a,b,c'.split(',', 2)", "['a', 'b,c']"),
        ("'a-b-c'.replace('-', '+', 1)", "'a+b-c'"),
        ("[[1], [2, [3]]].flatten()", "[1, 2, [3]]"),
        ("[[1], [2, [3]]].flatten(2)", "[1, 2, 3]"),
        ("[1, 2, 3, 4].slice(1, 3)", "[2, 3]"),
        ("[1, 2, 1].distinct()", "[1, 2]"),
        ("[1, 2, 3].reverse()", "[3, 2, 1]"),
        ("[3, 1, 2].sort()", "[1, 2, 3]"),
        ("['bb', 'a'].sortBy(s, size(s))", "['a', 'bb']"),
        ("lists.range(3)", "[0, 1, 2]"),
        ("math.greatest(1, 5, 3)", "5"),
        ("math.least([4, 2])", "2"),
        ("math.ceil(1.2)", "2.0"),
        ("math.floor(1.8)", "1.0"),
        ("math.round(2.5)", "3.0"),
        ("math.trunc(-1.5)", "-1.0"),
        ("math.abs(-3)", "3"),
        ("math.sign(-2.5)", "-1.0"),
        ("math.sqrt(16)", "4.0"),
        ("math.isFinite(1.0)", "true"),
        ("math.bitAnd(6, 3)", "2"),
        ("math.bitShiftLeft(1, 4)", "16"),
    ];

    #[test]
    fn documented_examples_give_their_documented_results() {
        for (expr, result) in DOCUMENTED_EXAMPLES {
            let expected = eval(result).unwrap_or_else(|e| panic!("{result}: {e}"));
            assert_eval(expr, expected);
        }
    }

    /// The examples are those of the tables of the doc: a row whose last two cells are each
    /// one code span is an example and its result.
    #[test]
    fn documented_examples_are_those_of_the_doc() {
        let doc = include_str!("../../../docs/expressions-functions.md");
        fn code(cell: &str) -> Option<&str> {
            let cell = cell.trim();
            cell.strip_prefix('`')
                .and_then(|c| c.strip_suffix('`'))
                .filter(|c| !c.contains('`'))
        }
        let in_doc: Vec<(&str, &str)> = doc
            .lines()
            .filter(|line| line.starts_with('|'))
            .filter_map(|line| {
                let cells: Vec<&str> = line.split('|').collect();
                match cells.as_slice() {
                    [.., example, result, _] => Some((code(example)?, code(result)?)),
                    _ => None,
                }
            })
            .collect();
        assert_eq!(in_doc, DOCUMENTED_EXAMPLES);
    }

    /// The doc and the registry name the same functions: every function a table of the doc
    /// lists (its first column) can be called, and every function that can be called is
    /// named in the doc (in a table or in the text).
    #[test]
    fn the_doc_names_exactly_the_registered_functions() {
        let doc = include_str!("../../../docs/expressions-functions.md");
        const NAMESPACES: [&str; 4] = ["math", "lists", "strings", "optional"];
        // `s.replace(old, new)` → replace; `math.greatest` stays; `in` is an operator.
        fn name_of(span: &str) -> Option<&str> {
            let head = span.split('(').next()?.trim();
            let name = match head.rsplit_once('.') {
                Some((ns, _)) if NAMESPACES.contains(&ns) => head,
                Some((_, name)) => name,
                None => head,
            };
            let ok = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
            ok.then_some(name)
        }
        fn spans(text: &str) -> impl Iterator<Item = &str> {
            text.split('`').skip(1).step_by(2)
        }
        use std::collections::BTreeSet;
        let registered: BTreeSet<&str> = function_names().iter().copied().collect();
        let mut listed = BTreeSet::new();
        for line in doc.lines().filter(|l| l.starts_with("| `")) {
            let first = line.split('|').nth(1).unwrap_or_default();
            listed.extend(spans(first).filter_map(name_of));
        }
        let operators = ["in"];
        let unknown: Vec<&&str> = listed
            .iter()
            .filter(|n| !registered.contains(*n) && !operators.contains(n))
            .collect();
        assert!(
            unknown.is_empty(),
            "documented but not callable: {unknown:?}"
        );
        let named: BTreeSet<&str> = spans(doc).filter_map(name_of).collect();
        let undocumented: Vec<&&str> = registered.iter().filter(|n| !named.contains(*n)).collect();
        assert!(
            undocumented.is_empty(),
            "callable but not in docs/expressions-functions.md: {undocumented:?}"
        );
    }

    #[test]
    fn function_names_are_sorted_and_unique() {
        let names = function_names();
        assert!(names.windows(2).all(|w| w[0] < w[1]), "{names:?}");
    }

    /// Every name listed is one an expression can call: a macro, or a function declared as a
    /// global or a member overload (called with no arguments, such a function fails with a
    /// "no matching overload" error rather than an undeclared reference).
    #[test]
    fn function_names_are_all_declared() {
        let macros = [
            ("all", "[1].all(x, x > 0)"),
            ("default", "default(null, 1) == 1"),
            ("exists", "[1].exists(x, x > 0)"),
            ("existsOne", "[1].existsOne(x, x > 0)"),
            ("exists_one", "[1].exists_one(x, x > 0)"),
            ("filter", "[1].filter(x, x > 0) == [1]"),
            ("has", "has({'a': 1}.a)"),
            ("map", "[1].map(x, x) == [1]"),
            ("math.greatest", "math.greatest(1, 2) == 2"),
            ("math.least", "math.least(1, 2) == 1"),
            (
                "optFlatMap",
                "optional.of(1).optFlatMap(x, optional.of(x)).value() == 1",
            ),
            ("optMap", "optional.of(1).optMap(x, x + 1).value() == 2"),
            ("sortBy", "[2, 1].sortBy(x, x) == [1, 2]"),
        ];
        for (_, expr) in macros {
            assert_true(expr);
        }
        for name in function_names() {
            if macros.iter().any(|(m, _)| m == name) {
                continue;
            }
            let global = eval(&format!("{name}()"));
            let member = eval(&format!("dyn(0).{name}()"));
            assert!(
                !is_undeclared(&global, name) || !is_undeclared(&member, name),
                "{name}: {global:?} / {member:?}"
            );
        }
        // and the check tells an undeclared name apart
        let nope = eval("nope()");
        assert!(is_undeclared(&nope, "nope"), "{nope:?}");
        assert_eq!(
            nope.unwrap_err().to_string(),
            "Undeclared reference to 'nope'"
        );
    }

    #[test]
    fn no_panic_on_odd_inputs() {
        for expr in [
            "parseInt('-')",
            "parseInt('٣')",
            "parseFloat('')",
            "parseTimestamp('2024-02-30')",
            "parseTimestamp('0000-01-01')",
            "formatTimestamp(now(), '%.3f%:z%#z%E')",
            "jsonDecode('\"\\\\ud800\"')",
            "jsonDecode('1e400')",
            "'é'.split('')",
            "toString(optional.none())",
            "flatten([[[]]])",
            "default(default, default)",
        ] {
            let _ = eval(expr);
        }
    }
}
