//! Hydra's multirun grammar for sweep arguments: `key=v1,v2,v3` (a comma list), `key=range(start,
//! stop[,step])` (Python's range; floats allowed), `key=choice(a,b)`; anything else is one override
//! applied to every run. Commas inside quotes or brackets do not split: `key='a,b'` and `key=[1,2]` are
//! single values, and the quotes stay for the YAML parse of the value.

use crate::error::{Error, Result};

/// One swept key and its values, as override text (`value` in `key=value`).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Axis {
    pub key: String,
    pub values: Vec<String>,
}

/// A sweep argument: one override for every run, or an axis.
#[derive(Clone, Debug, PartialEq)]
pub enum Arg {
    Fixed(String),
    Axis(Axis),
}

/// The most values one `range(...)` may produce (a sweep is capped long before).
const MAX_RANGE: usize = 1_000_000;

/// Parse one `key=value` argument.
pub fn parse_arg(arg: &str) -> Result<Arg> {
    let (key, value) = arg.split_once('=').ok_or_else(|| {
        Error::config(
            arg,
            "a sweep argument is key=value, key=v1,v2,... or key=range(start,stop[,step])",
        )
    })?;
    let key = key.trim().to_string();
    let value = value.trim();
    if let Some(inner) = call(value, "range") {
        let values = range(&key, inner)?;
        return Ok(Arg::Axis(Axis { key, values }));
    }
    let (inner, is_choice) = match call(value, "choice") {
        Some(inner) => (inner, true),
        None => (value, false),
    };
    let parts = split_top_level(inner).map_err(|msg| Error::config(&key, msg))?;
    if parts.len() == 1 && !is_choice {
        return Ok(Arg::Fixed(format!("{key}={value}")));
    }
    if let Some(i) = parts.iter().position(|p| p.is_empty()) {
        return Err(Error::config(
            &key,
            format!(
                "empty axis value (element {} of `{value}`); an axis is v1,v2,...",
                i + 1
            ),
        ));
    }
    Ok(Arg::Axis(Axis { key, values: parts }))
}

/// `name(inner)` → `inner`.
fn call<'a>(value: &'a str, name: &str) -> Option<&'a str> {
    value
        .strip_prefix(name)?
        .trim_start()
        .strip_prefix('(')?
        .strip_suffix(')')
}

/// Split on commas outside quotes and brackets; each part trimmed.
fn split_top_level(s: &str) -> std::result::Result<Vec<String>, String> {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut depth = 0i32;
    let mut quote: Option<char> = None;
    for c in s.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '[' | '{' | '(') => depth += 1,
            (None, ']' | '}' | ')') => depth -= 1,
            (None, ',') if depth == 0 => {
                parts.push(cur.trim().to_string());
                cur.clear();
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    if let Some(q) = quote {
        return Err(format!("unclosed quote {q} in `{s}`"));
    }
    if depth != 0 {
        return Err(format!("unbalanced brackets in `{s}`"));
    }
    parts.push(cur.trim().to_string());
    Ok(parts)
}

/// The values of `range(start, stop[, step])`: integers when all three are, floats otherwise.
fn range(key: &str, inner: &str) -> Result<Vec<String>> {
    let err = |msg: String| Error::config(key, msg);
    let args: Vec<&str> = inner.split(',').map(str::trim).collect();
    if !(2..=3).contains(&args.len()) {
        return Err(err(format!(
            "range({inner}): give range(start,stop) or range(start,stop,step)"
        )));
    }
    let ints: Option<Vec<i64>> = args.iter().map(|a| a.parse::<i64>().ok()).collect();
    if let Some(v) = ints {
        let (start, stop, step) = (v[0], v[1], v.get(2).copied().unwrap_or(1));
        if step == 0 {
            return Err(err(format!("range({inner}): the step is 0")));
        }
        let n = if (stop - start).signum() == step.signum() {
            ((stop - start).abs() + step.abs() - 1) / step.abs()
        } else {
            0
        } as usize;
        check_len(key, inner, n)?;
        return Ok((0..n as i64)
            .map(|i| (start + i * step).to_string())
            .collect());
    }
    let floats: Vec<f64> = args
        .iter()
        .map(|a| {
            a.parse::<f64>()
                .ok()
                .filter(|x| x.is_finite())
                .ok_or_else(|| err(format!("range({inner}): `{a}` is not a number")))
        })
        .collect::<Result<_>>()?;
    let (start, stop, step) = (floats[0], floats[1], floats.get(2).copied().unwrap_or(1.0));
    if step == 0.0 {
        return Err(err(format!("range({inner}): the step is 0")));
    }
    // Values start + i·step below stop, with a little slack so that range(0,1,0.1) has 10 values.
    let span = (stop - start) / step;
    let n = if span > 0.0 {
        (span - 1e-9).ceil().min(MAX_RANGE as f64 + 1.0) as usize
    } else {
        0
    };
    check_len(key, inner, n)?;
    Ok((0..n)
        .map(|i| {
            // 12 significant digits hide the rounding of start + i·step (0.30000000000000004).
            let x = start + i as f64 * step;
            let x: f64 = format!("{x:.11e}").parse().unwrap_or(x);
            let s = x.to_string();
            if s.contains(['.', 'e', 'E']) || s.contains("inf") {
                s
            } else {
                format!("{s}.0")
            }
        })
        .collect())
}

fn check_len(key: &str, inner: &str, n: usize) -> Result<()> {
    if n == 0 {
        return Err(Error::config(key, format!("range({inner}) is empty")));
    }
    if n > MAX_RANGE {
        return Err(Error::config(
            key,
            format!("range({inner}) has more than {MAX_RANGE} values"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn axis(arg: &str) -> Vec<String> {
        match parse_arg(arg).unwrap() {
            Arg::Axis(a) => a.values,
            Arg::Fixed(f) => panic!("fixed: {f}"),
        }
    }

    #[test]
    fn lists_ranges_and_quotes() {
        assert_eq!(axis("seed=0,1,2"), ["0", "1", "2"]);
        assert_eq!(axis("model.d_model=range(1,9,2)"), ["1", "3", "5", "7"]);
        assert_eq!(axis("x=range(0,3)"), ["0", "1", "2"]);
        assert_eq!(axis("x=range(5,0,-2)"), ["5", "3", "1"]);
        assert_eq!(axis("x=range(0,1,0.25)"), ["0.0", "0.25", "0.5", "0.75"]);
        assert_eq!(axis("x=range(0,0.3,0.1)"), ["0.0", "0.1", "0.2"]);
        assert_eq!(axis("x=choice(a,b)"), ["a", "b"]);
        assert_eq!(axis("x='a,b',c"), ["'a,b'", "c"]);
        assert_eq!(axis("x=[1,2],[3]"), ["[1,2]", "[3]"]);
        assert_eq!(parse_arg("x='a,b'").unwrap(), Arg::Fixed("x='a,b'".into()));
        assert_eq!(parse_arg("x=[1,2]").unwrap(), Arg::Fixed("x=[1,2]".into()));
        assert_eq!(parse_arg("x=").unwrap(), Arg::Fixed("x=".into()));
    }

    #[test]
    fn bad_axes_are_errors_naming_the_key() {
        for (arg, want) in [
            ("x=range(1,5,0)", "the step is 0"),
            ("x=range(5,1)", "is empty"),
            ("x=range(0,1,-0.5)", "is empty"),
            ("x=range(1)", "range(start,stop)"),
            ("x=range(a,2)", "`a` is not a number"),
            ("x=1,,2", "element 2"),
            ("x=,", "empty axis value"),
            ("x='a,b", "unclosed quote"),
            ("x=[1,2", "unbalanced"),
            ("novalue", "key=value"),
        ] {
            let e = parse_arg(arg).unwrap_err().to_string();
            assert!(e.contains(want), "{arg}: {e}");
        }
        let e = parse_arg("optim.lr=range(1,1)").unwrap_err().to_string();
        assert!(e.contains("`optim.lr`"), "{e}");
    }
}
