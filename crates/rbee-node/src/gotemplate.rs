//! Ollama's chat templates: Go's `text/template`, the subset Ollama's model templates use, and
//! Ollama's way of feeding a chat through one (`template.Execute` in Ollama's `template`
//! package). A preset's TEMPLATE is rendered here, on the node that takes the request, and
//! the resulting text is what the engine generates from (the base model's own Jinja template
//! is then not used).
//!
//! Supported: text and `{{ … }}` actions with `{{-` / `-}}` whitespace trimming and
//! `{{/* comments */}}`; `if` / `else if` / `else`, `range` (over lists and maps, with
//! `$i, $v :=` or `$v :=`, and `else`), `with` (and `else`, `else with`), `end`; variables
//! (`$x := …`, `$x = …`, `$` and `$.Field`); fields (`.A.B`, `$x.A`, `(…).A`); pipelines
//! (`a | f`); string, raw-string, number, `true`/`false`/`nil` literals; and the functions
//! `eq ne lt le gt ge and or not len slice index json print`. Anything else — `define`,
//! `template`, `block`, `break`, `continue`, other functions — is refused when the template
//! is parsed, with a message naming it, so a template is never rendered wrongly.
//!
//! The data is Ollama's: `.System`, `.Prompt`, `.Response`, `.Messages` (each with `.Role`,
//! `.Content`, `.ToolCalls` of `.Function.Name` / `.Function.Arguments`, `.ToolCallID`),
//! `.Tools` (each `.Type`, `.Function.Name` / `.Description` / `.Parameters`), `.Think`,
//! `.IsThinkSet`. Values are JSON; a field `.FooBar` reads the key `FooBar`, else `foo_bar`
//! (Ollama's JSON names). A map, list or object prints as Ollama's types do (they print as
//! their JSON): compact JSON with Go's HTML escaping of `<`, `>`, `&`. A missing key is
//! empty (Ollama parses with `missingkey=zero`).

use serde_json::{Map, Value};

/// The largest template accepted (Ollama's are a few kilobytes).
pub const MAX_TEMPLATE_BYTES: usize = 64 * 1024;
/// The largest rendered prompt (a runaway template cannot eat the node's memory).
const MAX_OUTPUT_BYTES: usize = 16 << 20;
/// How deeply blocks and parentheses may nest.
const MAX_DEPTH: usize = 64;

const FUNCTIONS: &[&str] = &[
    "eq", "ne", "lt", "le", "gt", "ge", "and", "or", "not", "len", "slice", "index", "json",
    "print",
];

/// Why a template cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("TEMPLATE: {0}")]
    Parse(String),
    #[error("TEMPLATE: rendering failed: {0}")]
    Render(String),
}

fn parse_err<T>(m: impl Into<String>) -> Result<T, TemplateError> {
    Err(TemplateError::Parse(m.into()))
}

fn render_err<T>(m: impl Into<String>) -> Result<T, TemplateError> {
    Err(TemplateError::Render(m.into()))
}

#[derive(Debug, Clone, PartialEq)]
enum Arg {
    Func(String),
    Dot,
    /// A field chain on dot: `.A.B`.
    Field(Vec<String>),
    /// `$name.A.B` (`$` alone: the name is empty).
    Var(String, Vec<String>),
    /// `(pipeline).A.B`.
    Group(Box<Pipe>, Vec<String>),
    Lit(Value),
}

#[derive(Debug, Clone, PartialEq)]
struct Pipe {
    /// Variables declared (`:=`) or assigned (`=`).
    vars: Vec<String>,
    assign: bool,
    cmds: Vec<Vec<Arg>>,
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    Text(String),
    Action(Pipe),
    If(Pipe, Vec<Node>, Vec<Node>),
    Range(Pipe, Vec<Node>, Vec<Node>),
    With(Pipe, Vec<Node>, Vec<Node>),
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    nodes: Vec<Node>,
    /// Every identifier it names, lower-cased (Ollama's `Vars`).
    vars: Vec<String>,
}

// ---------------------------------------------------------------- lexing

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    /// `.A` (one segment; chains are consecutive tokens with no space between).
    Field(String),
    Dot,
    Var(String),
    Lit(Value),
    LParen,
    RParen,
    Pipe,
    Declare,
    Assign,
    Comma,
}

/// A token and whether whitespace came before it.
type Spanned = (Tok, bool);

enum Item {
    Text(String),
    Action(Vec<Spanned>),
}

fn lex_action(src: &str) -> Result<Vec<Spanned>, TemplateError> {
    let chars: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let mut space = true;
    let word = |c: char| c.is_alphanumeric() || c == '_';
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            space = true;
            i += 1;
            continue;
        }
        let tok = match c {
            '(' => {
                i += 1;
                Tok::LParen
            }
            ')' => {
                i += 1;
                Tok::RParen
            }
            '|' => {
                i += 1;
                Tok::Pipe
            }
            ',' => {
                i += 1;
                Tok::Comma
            }
            ':' if chars.get(i + 1) == Some(&'=') => {
                i += 2;
                Tok::Declare
            }
            '=' => {
                i += 1;
                Tok::Assign
            }
            '.' if chars
                .get(i + 1)
                .is_some_and(|&c| word(c) && !c.is_ascii_digit()) =>
            {
                let start = i + 1;
                i += 1;
                while i < chars.len() && word(chars[i]) {
                    i += 1;
                }
                Tok::Field(chars[start..i].iter().collect())
            }
            '.' if !chars.get(i + 1).is_some_and(|c| c.is_ascii_digit()) => {
                i += 1;
                Tok::Dot
            }
            '$' => {
                let start = i + 1;
                i += 1;
                while i < chars.len() && word(chars[i]) {
                    i += 1;
                }
                Tok::Var(chars[start..i].iter().collect())
            }
            '"' => {
                let mut s = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None => return parse_err("a string literal is never closed"),
                        Some('"') => {
                            i += 1;
                            break;
                        }
                        Some('\\') => {
                            let e = chars.get(i + 1).copied();
                            s.push(match e {
                                Some('n') => '\n',
                                Some('t') => '\t',
                                Some('r') => '\r',
                                Some('\\') => '\\',
                                Some('"') => '"',
                                Some('\'') => '\'',
                                other => {
                                    return parse_err(format!(
                                        "the escape `\\{}` in a string literal is not supported",
                                        other.map(String::from).unwrap_or_default()
                                    ));
                                }
                            });
                            i += 2;
                        }
                        Some(&c) => {
                            s.push(c);
                            i += 1;
                        }
                    }
                }
                Tok::Lit(Value::String(s))
            }
            '`' => {
                let start = i + 1;
                let Some(len) = chars[start..].iter().position(|&c| c == '`') else {
                    return parse_err("a raw string literal is never closed");
                };
                i = start + len + 1;
                Tok::Lit(Value::String(chars[start..start + len].iter().collect()))
            }
            c if c.is_ascii_digit()
                || ((c == '-' || c == '+' || c == '.')
                    && i + 1 < chars.len()
                    && chars[i + 1].is_ascii_digit()) =>
            {
                let start = i;
                i += 1;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || chars[i] == '.' || chars[i] == '_')
                {
                    i += 1;
                }
                let text: String = chars[start..i].iter().collect();
                if let Ok(n) = text.parse::<i64>() {
                    Tok::Lit(Value::from(n))
                } else if let Some(f) = text.parse::<f64>().ok().filter(|f| f.is_finite()) {
                    Tok::Lit(Value::from(f))
                } else {
                    return parse_err(format!("the number `{text}` is not supported"));
                }
            }
            '\'' => return parse_err("character literals (`'x'`) are not supported"),
            c if word(c) => {
                let start = i;
                while i < chars.len() && word(chars[i]) {
                    i += 1;
                }
                let w: String = chars[start..i].iter().collect();
                match w.as_str() {
                    "true" => Tok::Lit(Value::Bool(true)),
                    "false" => Tok::Lit(Value::Bool(false)),
                    "nil" => Tok::Lit(Value::Null),
                    _ => Tok::Ident(w),
                }
            }
            other => {
                return parse_err(format!(
                    "the character `{other}` in an action is not supported"
                ));
            }
        };
        out.push((tok, space));
        space = false;
    }
    Ok(out)
}

/// Splits the source into text and actions, applying `{{-` / `-}}` trimming and dropping
/// comments.
fn lex(src: &str) -> Result<Vec<Item>, TemplateError> {
    let mut items = Vec::new();
    let mut rest = src;
    let mut trim_next = false;
    while !rest.is_empty() {
        let Some(open) = rest.find("{{") else {
            let text = if trim_next { rest.trim_start() } else { rest };
            items.push(Item::Text(text.to_string()));
            break;
        };
        let mut text = &rest[..open];
        if trim_next {
            text = text.trim_start();
        }
        let mut body = &rest[open + 2..];
        if body.starts_with("- ")
            || body.starts_with("-\n")
            || body.starts_with("-\t")
            || body.starts_with("-\r")
        {
            text = text.trim_end();
            body = &body[1..];
        }
        if !text.is_empty() {
            items.push(Item::Text(text.to_string()));
        }
        // The action's end: `}}` outside string literals.
        let bytes = body.as_bytes();
        let mut i = 0;
        let mut quote: Option<u8> = None;
        let end = loop {
            if i + 1 >= bytes.len() {
                return parse_err("an action `{{` is never closed with `}}`");
            }
            match (quote, bytes[i]) {
                (Some(b'"'), b'\\') => i += 1,
                (Some(q), b) if b == q => quote = None,
                (Some(_), _) => {}
                (None, b'"' | b'`') => quote = Some(bytes[i]),
                (None, b'}') if bytes[i + 1] == b'}' => break i,
                _ => {}
            }
            i += 1;
        };
        let mut inner = &body[..end];
        trim_next = false;
        if inner.ends_with(" -")
            || inner.ends_with("\n-")
            || inner.ends_with("\t-")
            || inner.ends_with("\r-")
        {
            trim_next = true;
            inner = &inner[..inner.len() - 1];
        }
        rest = &body[end + 2..];
        let trimmed = inner.trim();
        if trimmed.starts_with("/*") {
            if !trimmed.ends_with("*/") {
                return parse_err("a comment `{{/*` is not closed with `*/}}`");
            }
            continue;
        }
        items.push(Item::Action(lex_action(inner)?));
    }
    Ok(items)
}

// ---------------------------------------------------------------- parsing

/// What ended a list of nodes.
enum End {
    /// `{{ end }}`.
    Keyword,
    Else(Vec<Spanned>),
    Eof,
}

struct Parser {
    items: std::vec::IntoIter<Item>,
    depth: usize,
}

impl Parser {
    fn list(&mut self) -> Result<(Vec<Node>, End), TemplateError> {
        let mut nodes = Vec::new();
        while let Some(item) = self.items.next() {
            let toks = match item {
                Item::Text(t) => {
                    nodes.push(Node::Text(t));
                    continue;
                }
                Item::Action(t) => t,
            };
            let keyword = match toks.first() {
                Some((Tok::Ident(w), _)) => w.clone(),
                _ => String::new(),
            };
            match keyword.as_str() {
                "end" => {
                    if toks.len() > 1 {
                        return parse_err("`end` takes nothing after it");
                    }
                    return Ok((nodes, End::Keyword));
                }
                "else" => return Ok((nodes, End::Else(toks[1..].to_vec()))),
                "if" | "range" | "with" => nodes.push(self.block(&keyword, &toks[1..])?),
                "define" | "template" | "block" | "break" | "continue" => {
                    return parse_err(format!(
                        "`{keyword}` is not supported (rbee renders the subset of Go templates Ollama's model templates use)"
                    ));
                }
                _ => nodes.push(Node::Action(pipeline(&toks, false)?)),
            }
        }
        Ok((nodes, End::Eof))
    }

    fn block(&mut self, keyword: &str, toks: &[Spanned]) -> Result<Node, TemplateError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return parse_err(format!("blocks nest more than {MAX_DEPTH} deep"));
        }
        let pipe = pipeline(toks, keyword == "range")?;
        if keyword == "range" && pipe.vars.len() > 2 {
            return parse_err("`range` declares at most two variables");
        }
        if keyword != "range" && pipe.vars.len() > 1 {
            return parse_err(format!("`{keyword}` declares at most one variable"));
        }
        let (body, end) = self.list()?;
        let els = match end {
            End::Keyword => Vec::new(),
            End::Eof => return parse_err(format!("`{keyword}` has no `end`")),
            End::Else(rest) if rest.is_empty() => match self.list()? {
                (els, End::Keyword) => els,
                (_, End::Else(_)) => return parse_err(format!("`{keyword}` has two `else`")),
                (_, End::Eof) => return parse_err(format!("`{keyword}` has no `end`")),
            },
            End::Else(rest) => match rest.first() {
                Some((Tok::Ident(w), _)) if (w == "if" || w == "with") && keyword != "range" => {
                    let w = w.clone();
                    vec![self.block(&w, &rest[1..])?]
                }
                _ => return parse_err("`else` may be followed only by `if` or `with`"),
            },
        };
        self.depth -= 1;
        Ok(match keyword {
            "if" => Node::If(pipe, body, els),
            "range" => Node::Range(pipe, body, els),
            _ => Node::With(pipe, body, els),
        })
    }
}

/// A pipeline: `[$a[, $b] :=|=] cmd | cmd …`.
fn pipeline(toks: &[Spanned], allow_two: bool) -> Result<Pipe, TemplateError> {
    let mut vars = Vec::new();
    let mut assign = false;
    let mut rest = toks;
    // Declarations: `$x :=`, `$x =`, `$i, $v :=`.
    let decl_at = toks
        .iter()
        .position(|(t, _)| matches!(t, Tok::Declare | Tok::Assign));
    if let Some(at) = decl_at {
        let names = &toks[..at];
        let mut ok = !names.is_empty();
        for (k, (t, _)) in names.iter().enumerate() {
            match (k % 2, t) {
                (0, Tok::Var(n)) if !n.is_empty() => vars.push(n.clone()),
                (1, Tok::Comma) if allow_two => {}
                _ => ok = false,
            }
        }
        if !ok || names.len().is_multiple_of(2) {
            return parse_err("a declaration is `$name := pipeline` (or `$i, $v :=` in `range`)");
        }
        assign = matches!(toks[at].0, Tok::Assign);
        rest = &toks[at + 1..];
    }
    let mut cmds = Vec::new();
    for cmd in rest.split(|(t, _)| *t == Tok::Pipe) {
        cmds.push(command(cmd, 0)?);
    }
    if cmds.iter().any(Vec::is_empty) {
        return parse_err("an empty command in a pipeline");
    }
    Ok(Pipe { vars, assign, cmds })
}

/// One command's operands.
fn command(toks: &[Spanned], depth: usize) -> Result<Vec<Arg>, TemplateError> {
    if depth > MAX_DEPTH {
        return parse_err(format!("parentheses nest more than {MAX_DEPTH} deep"));
    }
    let mut args = Vec::new();
    let mut i = 0;
    // Field segments right after an operand (no space): `$x.A.B`, `(…).A`.
    let chain = |i: &mut usize| {
        let mut fields = Vec::new();
        while let Some((Tok::Field(f), false)) = toks.get(*i) {
            fields.push(f.clone());
            *i += 1;
        }
        fields
    };
    while i < toks.len() {
        let (tok, _) = &toks[i];
        i += 1;
        let arg = match tok {
            Tok::Ident(name) => {
                if !FUNCTIONS.contains(&name.as_str()) {
                    return parse_err(format!(
                        "the function `{name}` is not supported (supported: {})",
                        FUNCTIONS.join(", ")
                    ));
                }
                if !args.is_empty() {
                    return parse_err(format!(
                        "the function `{name}` is an argument; call it in parentheses"
                    ));
                }
                Arg::Func(name.clone())
            }
            Tok::Dot => Arg::Dot,
            Tok::Field(f) => {
                let mut fields = vec![f.clone()];
                fields.extend(chain(&mut i));
                Arg::Field(fields)
            }
            Tok::Var(v) => Arg::Var(v.clone(), chain(&mut i)),
            Tok::Lit(v) => Arg::Lit(v.clone()),
            Tok::LParen => {
                let mut level = 1;
                let start = i;
                while i < toks.len() && level > 0 {
                    match toks[i].0 {
                        Tok::LParen => level += 1,
                        Tok::RParen => level -= 1,
                        _ => {}
                    }
                    i += 1;
                }
                if level != 0 {
                    return parse_err("a `(` is never closed");
                }
                let inner = &toks[start..i - 1];
                let mut cmds = Vec::new();
                for cmd in inner.split(|(t, _)| *t == Tok::Pipe) {
                    cmds.push(command(cmd, depth + 1)?);
                }
                if cmds.iter().any(Vec::is_empty) {
                    return parse_err("empty parentheses");
                }
                let pipe = Pipe {
                    vars: Vec::new(),
                    assign: false,
                    cmds,
                };
                Arg::Group(Box::new(pipe), chain(&mut i))
            }
            Tok::RParen => return parse_err("a `)` without its `(`"),
            Tok::Declare | Tok::Assign => {
                return parse_err("a declaration (`:=`, `=`) must start the action");
            }
            Tok::Comma => return parse_err("an unexpected `,`"),
            Tok::Pipe => return parse_err("an unexpected `|`"),
        };
        args.push(arg);
    }
    if args.len() > 1 && !matches!(args[0], Arg::Func(_)) {
        return parse_err("an action has several operands but no function to call");
    }
    Ok(args)
}

/// Every identifier a list names (fields and variables' fields), lower-cased.
fn identifiers(nodes: &[Node], out: &mut Vec<String>) {
    fn pipe(p: &Pipe, out: &mut Vec<String>) {
        for a in p.cmds.iter().flatten() {
            match a {
                Arg::Field(f) => out.extend(f.iter().map(|s| s.to_lowercase())),
                Arg::Var(v, f) => {
                    out.push(v.to_lowercase());
                    out.extend(f.iter().map(|s| s.to_lowercase()));
                }
                Arg::Group(p2, f) => {
                    pipe(p2, out);
                    out.extend(f.iter().map(|s| s.to_lowercase()));
                }
                _ => {}
            }
        }
    }
    for n in nodes {
        match n {
            Node::Text(_) => {}
            Node::Action(p) => pipe(p, out),
            Node::If(p, a, b) | Node::Range(p, a, b) | Node::With(p, a, b) => {
                pipe(p, out);
                identifiers(a, out);
                identifiers(b, out);
            }
        }
    }
}

fn mentions_response(p: &Pipe) -> bool {
    p.cmds.iter().flatten().any(|a| match a {
        Arg::Field(f) => f.iter().any(|s| s == "Response"),
        _ => false,
    })
}

/// Ollama's cut for the last turn of a legacy template: everything after the first
/// `.Response` field (in tree order) is dropped; the action holding it stays.
fn cut_after_response(nodes: &[Node], cut: &mut bool) -> Vec<Node> {
    let mut out = Vec::new();
    for n in nodes {
        if *cut {
            continue;
        }
        match n {
            Node::Text(_) => out.push(n.clone()),
            Node::Action(p) => {
                if mentions_response(p) {
                    *cut = true;
                }
                out.push(n.clone());
            }
            Node::If(p, a, b) => {
                let a = cut_after_response(a, cut);
                let b = cut_after_response(b, cut);
                out.push(Node::If(p.clone(), a, b));
            }
            Node::Range(p, a, b) => {
                let a = cut_after_response(a, cut);
                let b = cut_after_response(b, cut);
                out.push(Node::Range(p.clone(), a, b));
            }
            Node::With(p, a, b) => {
                let a = cut_after_response(a, cut);
                let b = cut_after_response(b, cut);
                out.push(Node::With(p.clone(), a, b));
            }
        }
    }
    out
}

impl Template {
    /// Parses a template; an unsupported construct is refused by name.
    pub fn parse(src: &str) -> Result<Template, TemplateError> {
        if src.len() > MAX_TEMPLATE_BYTES {
            return parse_err(format!("the template is over {MAX_TEMPLATE_BYTES} bytes"));
        }
        let mut parser = Parser {
            items: lex(src)?.into_iter(),
            depth: 0,
        };
        let (mut nodes, end) = parser.list()?;
        match end {
            End::Eof => {}
            End::Keyword => return parse_err("an `end` without its `if`, `range` or `with`"),
            End::Else(_) => return parse_err("an `else` outside `if`, `range` or `with`"),
        }
        let mut vars = Vec::new();
        identifiers(&nodes, &mut vars);
        vars.sort();
        vars.dedup();
        // As Ollama: a template that names neither messages nor the response gets
        // `{{ .Response }}` at its end.
        if !vars.iter().any(|v| v == "messages" || v == "response") {
            nodes.push(Node::Action(Pipe {
                vars: Vec::new(),
                assign: false,
                cmds: vec![vec![Arg::Field(vec!["Response".into()])]],
            }));
        }
        Ok(Template { nodes, vars })
    }

    /// Whether the template reads `.Messages` (else it is rendered turn by turn through
    /// `.System` / `.Prompt` / `.Response`, as Ollama renders such templates).
    pub fn uses_messages(&self) -> bool {
        self.vars.iter().any(|v| v == "messages")
    }

    /// Whether the template writes the request's tools (`.Tools`).
    pub fn uses_tools(&self) -> bool {
        self.vars.iter().any(|v| v == "tools")
    }

    /// Renders a chat as Ollama does. `messages` are JSON objects with `role`, `content` and
    /// optionally `tool_calls` (`[{function: {name, arguments}}]`); `tools` the request's tools
    /// (`[{type, function: {name, description, parameters}}]`); `extra` further top-level
    /// values (`Think`, `IsThinkSet`). The text ends where the model's reply begins.
    pub fn render_chat(
        &self,
        messages: &[Value],
        tools: &[Value],
        extra: &Map<String, Value>,
    ) -> Result<String, TemplateError> {
        let messages: Vec<Value> = messages.iter().map(ollama_message).collect();
        let tools: Vec<Value> = tools.iter().map(ollama_tool).collect();
        let tools = tools.as_slice();
        let (system, collated) = collate(&messages);
        let top = |pairs: Vec<(&str, Value)>| {
            let mut m = extra.clone();
            for (k, v) in pairs {
                m.insert(k.to_string(), v);
            }
            Value::Object(m)
        };
        let mut out = String::new();
        if self.uses_messages() {
            let data = top(vec![
                ("System", Value::String(system)),
                ("Messages", Value::Array(collated)),
                ("Tools", Value::Array(tools.to_vec())),
                ("Response", Value::String(String::new())),
            ]);
            Exec::new(&data).run(&self.nodes, &data, &mut out)?;
            return Ok(out);
        }
        let (mut system, mut prompt, mut response) = (String::new(), String::new(), String::new());
        let turn = |s: &mut String, p: &mut String, r: &mut String, out: &mut String| {
            let data = top(vec![
                ("System", Value::String(std::mem::take(s))),
                ("Prompt", Value::String(std::mem::take(p))),
                ("Response", Value::String(std::mem::take(r))),
            ]);
            Exec::new(&data).run(&self.nodes, &data, out)
        };
        for m in &collated {
            let content = m["content"].as_str().unwrap_or_default().to_string();
            match m["role"].as_str() {
                Some("system") => {
                    if !prompt.is_empty() || !response.is_empty() {
                        turn(&mut system, &mut prompt, &mut response, &mut out)?;
                    }
                    system = content;
                }
                Some("user") => {
                    if !response.is_empty() {
                        turn(&mut system, &mut prompt, &mut response, &mut out)?;
                    }
                    prompt = content;
                }
                Some("assistant") => response = content,
                _ => {}
            }
        }
        let last = cut_after_response(&self.nodes, &mut false);
        let data = top(vec![
            ("System", Value::String(system)),
            ("Prompt", Value::String(prompt)),
            ("Response", Value::String(response)),
        ]);
        Exec::new(&data).run(&last, &data, &mut out)?;
        Ok(out)
    }
}

/// Keys in Go's `json.Marshal` order for a map: sorted, at every level.
fn sorted(v: &Value) -> Value {
    match v {
        Value::Object(o) => {
            let mut keys: Vec<&String> = o.keys().collect();
            keys.sort();
            Value::Object(
                keys.into_iter()
                    .map(|k| (k.clone(), sorted(&o[k])))
                    .collect(),
            )
        }
        Value::Array(a) => Value::Array(a.iter().map(sorted).collect()),
        other => other.clone(),
    }
}

/// `keys` first, in that order, then the rest as they came: the field order of Ollama's
/// structs, so `{{ . }}` and `json` print a tool as Ollama does.
fn ordered(o: &Map<String, Value>, keys: &[&str]) -> Map<String, Value> {
    let mut out = Map::new();
    for k in keys {
        if let Some(v) = o.get(*k) {
            out.insert((*k).to_string(), v.clone());
        }
    }
    for (k, v) in o {
        if !keys.contains(&k.as_str()) {
            out.insert(k.clone(), v.clone());
        }
    }
    out
}

/// A tool in the shape Ollama's `api.Tool` prints: `type`, `function` {`name`,
/// `description`, `parameters` {`type`, `$defs`, `items`, `required`, `properties` (by
/// name, each `type`, `items`, `description`, `enum` first)}}.
fn ollama_tool(tool: &Value) -> Value {
    let Some(t) = tool.as_object() else {
        return tool.clone();
    };
    let mut t = ordered(t, &["type", "items", "function"]);
    if let Some(Value::Object(f)) = t.get("function") {
        let mut f = ordered(f, &["name", "description", "parameters"]);
        if let Some(Value::Object(p)) = f.get("parameters") {
            let mut p = ordered(p, &["type", "$defs", "items", "required", "properties"]);
            if let Some(Value::Object(props)) = p.get("properties") {
                let mut names: Vec<&String> = props.keys().collect();
                names.sort();
                let props: Map<String, Value> = names
                    .into_iter()
                    .map(|n| {
                        let v = match &props[n] {
                            Value::Object(o) => {
                                Value::Object(ordered(o, &["type", "items", "description", "enum"]))
                            }
                            other => other.clone(),
                        };
                        (n.clone(), v)
                    })
                    .collect();
                p.insert("properties".into(), Value::Object(props));
            }
            f.insert("parameters".into(), Value::Object(p));
        }
        t.insert("function".into(), Value::Object(f));
    }
    Value::Object(t)
}

/// A message as Ollama's `api.Message` holds it: a call's arguments are a Go map (printed
/// with sorted keys).
fn ollama_message(m: &Value) -> Value {
    let mut m = m.clone();
    if let Some(Value::Array(calls)) = m.get_mut("tool_calls") {
        for c in calls {
            if let Some(args) = c.get_mut("function").and_then(|f| f.get_mut("arguments")) {
                *args = sorted(args);
            }
        }
    }
    m
}

/// Ollama's `collate`: every system message's text (joined by a blank line), and the
/// messages with consecutive ones of the same role (tool results excepted) merged.
fn collate(messages: &[Value]) -> (String, Vec<Value>) {
    let mut system = Vec::new();
    let mut out: Vec<Value> = Vec::new();
    for m in messages {
        let role = m["role"].as_str().unwrap_or_default();
        let content = m["content"].as_str().unwrap_or_default();
        if role == "system" {
            system.push(content.to_string());
        }
        if let Some(prev) = out.last_mut()
            && prev["role"].as_str() == Some(role)
            && role != "tool"
        {
            let merged = format!(
                "{}\n\n{content}",
                prev["content"].as_str().unwrap_or_default()
            );
            prev["content"] = Value::String(merged);
            continue;
        }
        out.push(m.clone());
    }
    (system.join("\n\n"), out)
}

// ---------------------------------------------------------------- execution

struct Exec<'a> {
    root: &'a Value,
    vars: Vec<(String, Value)>,
}

/// Go's truth: false, 0, nil, and empty strings, lists and maps are false.
fn truth(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

/// `FooBar` → `foo_bar` (`ToolCallID` → `tool_call_id`).
fn snake(name: &str) -> String {
    let chars: Vec<char> = name.chars().collect();
    let mut out = String::new();
    for (i, &c) in chars.iter().enumerate() {
        if c.is_uppercase() {
            let prev_lower = i > 0 && !chars[i - 1].is_uppercase();
            let next_lower = chars.get(i + 1).is_some_and(|n| n.is_lowercase());
            if i > 0 && (prev_lower || (next_lower && chars[i - 1].is_uppercase())) {
                out.push('_');
            }
            out.extend(c.to_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

fn field(v: &Value, name: &str) -> Result<Value, TemplateError> {
    match v {
        Value::Object(o) => Ok(o
            .get(name)
            .or_else(|| o.get(&snake(name)))
            .cloned()
            .unwrap_or(Value::Null)),
        Value::Null => Ok(Value::Null),
        other => render_err(format!("can't evaluate field {name} in {}", kind(other))),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "nil",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a map",
    }
}

/// JSON as Go's `json.Marshal` writes it: compact, `<`, `>`, `&` escaped.
fn go_json(v: &Value) -> String {
    v.to_string()
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
        .replace('\u{2028}', "\\u2028")
        .replace('\u{2029}', "\\u2029")
}

/// A value as `{{ … }}` prints it.
fn print(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        other => go_json(other),
    }
}

fn number(v: &Value) -> Option<f64> {
    v.as_f64()
}

fn compare(a: &Value, b: &Value, op: &str) -> Result<bool, TemplateError> {
    if op == "eq" || op == "ne" {
        let same = match (a, b) {
            (Value::Number(_), Value::Number(_)) => number(a) == number(b),
            (Value::String(x), Value::String(y)) => x == y,
            (Value::Bool(x), Value::Bool(y)) => x == y,
            (Value::Null, Value::Null) => true,
            (Value::Null, _) | (_, Value::Null) => false,
            _ => {
                return render_err(format!(
                    "{op}: incompatible types for comparison ({} and {})",
                    kind(a),
                    kind(b)
                ));
            }
        };
        return Ok(same == (op == "eq"));
    }
    let ord = match (a, b) {
        (Value::Number(_), Value::Number(_)) => number(a).partial_cmp(&number(b)),
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        _ => None,
    };
    let Some(ord) = ord else {
        return render_err(format!("{op}: cannot order {} and {}", kind(a), kind(b)));
    };
    Ok(match op {
        "lt" => ord.is_lt(),
        "le" => ord.is_le(),
        "gt" => ord.is_gt(),
        _ => ord.is_ge(),
    })
}

fn int_arg(v: &Value, what: &str) -> Result<i64, TemplateError> {
    v.as_i64().ok_or_else(|| {
        TemplateError::Render(format!(
            "{what}: an index must be an integer, not {}",
            kind(v)
        ))
    })
}

impl<'a> Exec<'a> {
    fn new(root: &'a Value) -> Exec<'a> {
        Exec {
            root,
            vars: vec![(String::new(), root.clone())],
        }
    }

    fn var(&self, name: &str) -> Result<Value, TemplateError> {
        if name.is_empty() {
            return Ok(self.root.clone());
        }
        self.vars
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .ok_or_else(|| TemplateError::Render(format!("undefined variable `${name}`")))
    }

    fn run(&mut self, nodes: &[Node], dot: &Value, out: &mut String) -> Result<(), TemplateError> {
        for n in nodes {
            if out.len() > MAX_OUTPUT_BYTES {
                return render_err(format!("the prompt is over {MAX_OUTPUT_BYTES} bytes"));
            }
            match n {
                Node::Text(t) => out.push_str(t),
                Node::Action(p) => {
                    let v = self.pipe(p, dot)?;
                    if p.vars.is_empty() {
                        out.push_str(&print(&v));
                    }
                }
                Node::If(p, then, els) => {
                    let mark = self.vars.len();
                    let v = self.pipe(p, dot)?;
                    let r = if truth(&v) {
                        self.run(then, dot, out)
                    } else {
                        self.run(els, dot, out)
                    };
                    self.vars.truncate(mark);
                    r?;
                }
                Node::With(p, body, els) => {
                    let mark = self.vars.len();
                    let v = self.pipe(p, dot)?;
                    let r = if truth(&v) {
                        self.run(body, &v, out)
                    } else {
                        self.run(els, dot, out)
                    };
                    self.vars.truncate(mark);
                    r?;
                }
                Node::Range(p, body, els) => {
                    let mark = self.vars.len();
                    let value = self.eval_cmds(&p.cmds, dot)?;
                    let items: Vec<(Value, Value)> = match &value {
                        Value::Array(a) => a
                            .iter()
                            .enumerate()
                            .map(|(i, v)| (Value::from(i), v.clone()))
                            .collect(),
                        Value::Object(o) => {
                            let mut keys: Vec<&String> = o.keys().collect();
                            keys.sort();
                            keys.into_iter()
                                .map(|k| (Value::String(k.clone()), o[k].clone()))
                                .collect()
                        }
                        Value::Null => Vec::new(),
                        other => {
                            return render_err(format!("range can't iterate over {}", kind(other)));
                        }
                    };
                    if items.is_empty() {
                        self.run(els, dot, out)?;
                    }
                    for (k, v) in items {
                        let inner = self.vars.len();
                        match p.vars.as_slice() {
                            [] => {}
                            [one] => self.vars.push((one.clone(), v.clone())),
                            [i, e, ..] => {
                                self.vars.push((i.clone(), k));
                                self.vars.push((e.clone(), v.clone()));
                            }
                        }
                        let r = self.run(body, &v, out);
                        self.vars.truncate(inner);
                        r?;
                    }
                    self.vars.truncate(mark);
                }
            }
        }
        Ok(())
    }

    /// A pipeline, with its declaration or assignment.
    fn pipe(&mut self, p: &Pipe, dot: &Value) -> Result<Value, TemplateError> {
        let v = self.eval_cmds(&p.cmds, dot)?;
        if let Some(name) = p.vars.first() {
            if p.assign {
                let Some(slot) = self.vars.iter_mut().rev().find(|(n, _)| n == name) else {
                    return render_err(format!("assignment to undefined variable `${name}`"));
                };
                slot.1 = v.clone();
            } else {
                self.vars.push((name.clone(), v.clone()));
            }
        }
        Ok(v)
    }

    fn eval_cmds(&mut self, cmds: &[Vec<Arg>], dot: &Value) -> Result<Value, TemplateError> {
        let mut last: Option<Value> = None;
        for cmd in cmds {
            last = Some(self.eval_cmd(cmd, dot, last.take())?);
        }
        Ok(last.unwrap_or(Value::Null))
    }

    fn operand(&mut self, a: &Arg, dot: &Value) -> Result<Value, TemplateError> {
        let chain = |mut v: Value, fields: &[String]| -> Result<Value, TemplateError> {
            for f in fields {
                v = field(&v, f)?;
            }
            Ok(v)
        };
        match a {
            Arg::Dot => Ok(dot.clone()),
            Arg::Field(f) => chain(dot.clone(), f),
            Arg::Var(name, f) => chain(self.var(name)?, f),
            Arg::Group(p, f) => {
                let v = self.eval_cmds(&p.cmds, dot)?;
                chain(v, f)
            }
            Arg::Lit(v) => Ok(v.clone()),
            Arg::Func(name) => self.call(name, &[], dot, None),
        }
    }

    fn eval_cmd(
        &mut self,
        cmd: &[Arg],
        dot: &Value,
        piped: Option<Value>,
    ) -> Result<Value, TemplateError> {
        match cmd.first() {
            Some(Arg::Func(name)) => self.call(name, &cmd[1..], dot, piped),
            Some(a) => {
                if piped.is_some() {
                    return render_err("a value is piped into something that is not a function");
                }
                self.operand(a, dot)
            }
            None => Ok(Value::Null),
        }
    }

    fn call(
        &mut self,
        name: &str,
        args: &[Arg],
        dot: &Value,
        piped: Option<Value>,
    ) -> Result<Value, TemplateError> {
        // `and` / `or` stop at the first argument that decides (Go 1.18+).
        if name == "and" || name == "or" {
            let total = args.len() + usize::from(piped.is_some());
            if total == 0 {
                return render_err(format!("{name} needs at least one argument"));
            }
            let mut last = Value::Null;
            for a in args {
                last = self.operand(a, dot)?;
                if truth(&last) == (name == "or") {
                    return Ok(last);
                }
            }
            if let Some(p) = piped {
                last = p;
            }
            return Ok(last);
        }
        let mut vals = Vec::with_capacity(args.len() + 1);
        for a in args {
            vals.push(self.operand(a, dot)?);
        }
        if let Some(p) = piped {
            vals.push(p);
        }
        let want = |n: usize| -> Result<(), TemplateError> {
            if vals.len() == n {
                Ok(())
            } else {
                render_err(format!("{name} takes {n} argument(s), got {}", vals.len()))
            }
        };
        match name {
            "not" => {
                want(1)?;
                Ok(Value::Bool(!truth(&vals[0])))
            }
            "eq" => {
                if vals.len() < 2 {
                    return render_err("eq needs at least two arguments");
                }
                for b in &vals[1..] {
                    if compare(&vals[0], b, "eq")? {
                        return Ok(Value::Bool(true));
                    }
                }
                Ok(Value::Bool(false))
            }
            "ne" | "lt" | "le" | "gt" | "ge" => {
                want(2)?;
                Ok(Value::Bool(compare(&vals[0], &vals[1], name)?))
            }
            "len" => {
                want(1)?;
                Ok(Value::from(match &vals[0] {
                    Value::String(s) => s.len(),
                    Value::Array(a) => a.len(),
                    Value::Object(o) => o.len(),
                    Value::Null => 0,
                    other => return render_err(format!("len of {}", kind(other))),
                }))
            }
            "slice" => {
                if vals.is_empty() || vals.len() > 3 {
                    return render_err("slice takes a value and up to two indexes");
                }
                let len = match &vals[0] {
                    Value::String(s) => s.len(),
                    Value::Array(a) => a.len(),
                    other => return render_err(format!("can't slice {}", kind(other))),
                };
                let idx = |k: usize, default: usize| -> Result<usize, TemplateError> {
                    match vals.get(k) {
                        None => Ok(default),
                        Some(v) => usize::try_from(int_arg(v, "slice")?)
                            .map_err(|_| TemplateError::Render("slice: a negative index".into())),
                    }
                };
                let (from, to) = (idx(1, 0)?, idx(2, len)?);
                if from > to || to > len {
                    return render_err(format!("slice: index out of range [{from}:{to}] of {len}"));
                }
                match &vals[0] {
                    Value::String(s) => s
                        .get(from..to)
                        .map(|t| Value::String(t.to_string()))
                        .ok_or_else(|| {
                            TemplateError::Render("slice: not at a character boundary".into())
                        }),
                    Value::Array(a) => Ok(Value::Array(a[from..to].to_vec())),
                    _ => Ok(Value::Null),
                }
            }
            "index" => {
                let Some((first, keys)) = vals.split_first() else {
                    return render_err("index needs a value");
                };
                let mut v = first.clone();
                for k in keys {
                    v = match (&v, k) {
                        (Value::Array(a), k) => {
                            let i = int_arg(k, "index")?;
                            usize::try_from(i)
                                .ok()
                                .and_then(|i| a.get(i))
                                .cloned()
                                .ok_or_else(|| {
                                    TemplateError::Render(format!("index out of range: {i}"))
                                })?
                        }
                        (Value::Object(o), Value::String(k)) => {
                            o.get(k).cloned().unwrap_or(Value::Null)
                        }
                        (Value::Null, _) => Value::Null,
                        (other, k) => {
                            return render_err(format!(
                                "can't index {} with {}",
                                kind(other),
                                kind(k)
                            ));
                        }
                    };
                }
                Ok(v)
            }
            "json" => {
                want(1)?;
                Ok(Value::String(if vals[0].is_null() {
                    "null".into()
                } else {
                    go_json(&vals[0])
                }))
            }
            "print" => {
                let mut s = String::new();
                for (k, v) in vals.iter().enumerate() {
                    // fmt.Sprint: a space between operands when neither is a string.
                    if k > 0 && !vals[k - 1].is_string() && !v.is_string() {
                        s.push(' ');
                    }
                    s.push_str(&print(v));
                }
                Ok(Value::String(s))
            }
            other => render_err(format!("the function `{other}` is not supported")),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    // Templates as Ollama ships them (ollama/ollama `template/*.gotmpl` and
    // `server/testdata/tools/*.gotmpl`); expected prompts from its `testdata` where the two
    // are of the same version, else worked out by Go's rules.
    const LLAMA3: &str = "{{- if .Messages }}\n{{- if .System }}<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}<|eot_id|>\n{{- end }}\n{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>\n{{- end }}<|start_header_id|>assistant<|end_header_id|>\n\n{{ else -}}\n{{ if .System }}<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}<|eot_id|>{{ end }}{{ if .Prompt }}<|start_header_id|>user<|end_header_id|>\n\n{{ .Prompt }}<|eot_id|>{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n{{ .Response }}<|eot_id|>\n{{- end -}}";
    const PHI3: &str = "{{ if .System }}<|system|>\n{{ .System }}<|end|>\n{{ end }}{{ if .Prompt }}<|user|>\n{{ .Prompt }}<|end|>\n{{ end }}<|assistant|>\n{{ .Response }}<|end|>";
    const MISTRAL: &str = "{{- if .Messages }}\n{{- range $index, $_ := .Messages }}\n{{- if eq .Role \"user\" }}[INST] {{ if and $.System (eq (len (slice $.Messages $index)) 1) }}{{ $.System }}\n{{ end }}{{ .Content }}\n{{- else if eq .Role \"assistant\" }}[/INST] {{ .Content }}</s>\n{{- end }}\n{{- end }}[/INST]\n{{- else -}}\n[INST] {{ if .System }}{{ .System }} {{ end }}{{ .Prompt }}[/INST] {{ .Response }}</s>\n{{- end -}}";
    const GEMMA3: &str = "{{- $system := .System }}\n{{- range $i, $_ := .Messages }}\n{{- $last := eq (len (slice $.Messages $i)) 1 }}\n{{- if eq .Role \"user\" }}<start_of_turn>user\n{{- if and (eq $i 1) $system }}\n{{ $system }}\n{{- end }}\n{{ .Content }}<end_of_turn>\n{{ else if eq .Role \"assistant\" }}<start_of_turn>model\n{{ .Content }}<end_of_turn>\n{{ end }}\n{{- if $last }}<start_of_turn>model\n{{ end }}\n{{- end }}\n";
    const LLAMA32_TOOLS: &str = "<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n\n{{ if .System }}{{ .System }}\n{{- end }}\n{{- if .Tools }}When you receive a tool call response, use the output to format an answer to the orginal user question.\n\nYou are a helpful assistant with tool calling capabilities.\n{{- end }}<|eot_id|>\n{{- range $i, $_ := .Messages }}\n{{- $last := eq (len (slice $.Messages $i)) 1 }}\n{{- if eq .Role \"user\" }}<|start_header_id|>user<|end_header_id|>\n{{- if and $.Tools $last }}\n\nGiven the following functions, please respond with a JSON for a function call with its proper arguments that best answers the given prompt.\n\nRespond in the format {\"name\": function name, \"parameters\": dictionary of argument name and its value}. Do not use variables.\n\n{{ range $.Tools }}\n{{- . }}\n{{ end }}\n{{ .Content }}<|eot_id|>\n{{- else }}\n\n{{ .Content }}<|eot_id|>\n{{- end }}{{ if $last }}<|start_header_id|>assistant<|end_header_id|>\n\n{{ end }}\n{{- else if eq .Role \"assistant\" }}<|start_header_id|>assistant<|end_header_id|>\n{{- if .ToolCalls }}\n{{ range .ToolCalls }}\n{\"name\": \"{{ .Function.Name }}\", \"parameters\": {{ .Function.Arguments }}}{{ end }}\n{{- else }}\n\n{{ .Content }}\n{{- end }}{{ if not $last }}<|eot_id|>{{ end }}\n{{- else if eq .Role \"tool\" }}<|start_header_id|>ipython<|end_header_id|>\n\n{{ .Content }}<|eot_id|>{{ if $last }}<|start_header_id|>assistant<|end_header_id|>\n\n{{ end }}\n{{- end }}\n{{- end }}";
    const QWEN3_TOOLS: &str = "{{- if .Messages }}\n{{- if or .System .Tools }}<|im_start|>system\n{{- if .System }}\n{{ .System }}\n{{- end }}\n{{- if .Tools }}\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>\n{{- range .Tools }}\n{\"type\": \"function\", \"function\": {{ .Function }}}\n{{- end }}\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>\n{{- end }}<|im_end|>\n{{ end }}\n{{- range $i, $_ := .Messages }}\n{{- $last := eq (len (slice $.Messages $i)) 1 -}}\n{{- if eq .Role \"user\" }}<|im_start|>user\n{{ .Content }}<|im_end|>\n{{ else if eq .Role \"assistant\" }}<|im_start|>assistant\n{{ if .Content }}{{ .Content }}\n{{- else if .ToolCalls }}<tool_call>\n{{ range .ToolCalls }}{\"name\": \"{{ .Function.Name }}\", \"arguments\": {{ .Function.Arguments }}}\n{{ end }}</tool_call>\n{{- end }}{{ if not $last }}<|im_end|>\n{{ end }}\n{{- else if eq .Role \"tool\" }}<|im_start|>user\n<tool_response>\n{{ .Content }}\n</tool_response><|im_end|>\n{{ end }}\n{{- if and (ne .Role \"assistant\") $last }}<|im_start|>assistant\n{{ end }}\n{{- end }}\n{{- else }}\n{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}{{ if .Prompt }}<|im_start|>user\n{{ .Prompt }}<|im_end|>\n{{ end }}<|im_start|>assistant\n{{ end }}{{ .Response }}{{ if .Response }}<|im_end|>{{ end }}";

    fn chat() -> Vec<Value> {
        vec![
            json!({"role": "system", "content": "You are a helpful assistant."}),
            json!({"role": "user", "content": "Hello, how are you?"}),
            json!({"role": "assistant", "content": "I'm doing great. How can I help you today?"}),
            json!({"role": "user", "content": "I'd like to show off how chat templating works!"}),
        ]
    }

    fn render(src: &str, messages: &[Value], tools: &[Value]) -> String {
        Template::parse(src)
            .unwrap()
            .render_chat(messages, tools, &Map::new())
            .unwrap()
    }

    #[test]
    fn ollamas_templates_render_as_ollama_renders_them() {
        // Ollama's testdata `user-assistant-user`.
        assert_eq!(
            render(LLAMA3, &chat()[1..], &[]),
            "<|start_header_id|>user<|end_header_id|>\n\nHello, how are you?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nI'm doing great. How can I help you today?<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nI'd like to show off how chat templating works!<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
        );
        // As in Ollama, `.Messages` keeps the system messages that `.System` also holds: this
        // template writes the system turn twice (Ollama's testdata is of an older version).
        assert!(render(LLAMA3, &chat(), &[]).starts_with(
            "<|start_header_id|>system<|end_header_id|>\n\nYou are a helpful assistant.<|eot_id|><|start_header_id|>system<|end_header_id|>\n\nYou are a helpful assistant.<|eot_id|><|start_header_id|>user"
        ));
        // A legacy template (no `.Messages`): turn by turn, the last cut after `.Response`.
        // (This version of phi-3's template has no newline after its last `<|end|>`, so turns
        // follow each other directly; Ollama's testdata is of a version that had one.)
        assert_eq!(
            render(PHI3, &chat(), &[]),
            "<|system|>\nYou are a helpful assistant.<|end|>\n<|user|>\nHello, how are you?<|end|>\n<|assistant|>\nI'm doing great. How can I help you today?<|end|><|user|>\nI'd like to show off how chat templating works!<|end|>\n<|assistant|>\n"
        );
        // `$.System` on the last user turn only; `$index` and `slice`.
        assert_eq!(
            render(MISTRAL, &chat(), &[]),
            "[INST] Hello, how are you?[/INST] I'm doing great. How can I help you today?</s>[INST] You are a helpful assistant.\nI'd like to show off how chat templating works![/INST]"
        );
        // A variable set before the range, read inside it.
        assert_eq!(
            render(GEMMA3, &chat(), &[]),
            "<start_of_turn>user\nYou are a helpful assistant.\nHello, how are you?<end_of_turn>\n<start_of_turn>model\nI'm doing great. How can I help you today?<end_of_turn>\n<start_of_turn>user\nI'd like to show off how chat templating works!<end_of_turn>\n<start_of_turn>model\n\n"
        );
    }

    /// Ollama's `TestExecuteWithMessages`: a legacy template with and without `.Response`
    /// and a `.Messages` one give the same prompt.
    #[test]
    fn legacy_and_messages_templates_agree_as_in_ollamas_tests() {
        let m = |r: &str, c: &str| json!({"role": r, "content": c});
        let cases: [(&[&str], Vec<Value>, &str); 3] = [
            (
                &[
                    "[INST] {{ if .System }}{{ .System }}\n\n{{ end }}{{ .Prompt }}[/INST] ",
                    "[INST] {{ if .System }}{{ .System }}\n\n{{ end }}{{ .Prompt }}[/INST] {{ .Response }}",
                    "[INST] {{ if .System }}{{ .System }}\n\n{{ end }}\n{{- range .Messages }}\n{{- if eq .Role \"user\" }}{{ .Content }}[/INST] {{ else if eq .Role \"assistant\" }}{{ .Content }}[INST] {{ end }}\n{{- end }}",
                ],
                vec![
                    m("system", "You are a helpful assistant!"),
                    m("user", "Hello friend!"),
                    m("assistant", "Hello human!"),
                    m("user", "What is your name?"),
                ],
                "[INST] You are a helpful assistant!\n\nHello friend![/INST] Hello human![INST] What is your name?[/INST] ",
            ),
            (
                &[
                    "[INST] {{ .Prompt }}[/INST] ",
                    "[INST] {{ .Prompt }}[/INST] {{ .Response }}",
                    "\n{{- range $i, $m := .Messages }}\n{{- if eq .Role \"user\" }}[INST] {{ .Content }}[/INST] {{ else if eq .Role \"assistant\" }}{{ .Content }}{{ end }}\n{{- end }}",
                ],
                vec![
                    m("user", "Hello friend!"),
                    m("assistant", "Hello human!"),
                    m("user", "What is your name?"),
                    m("assistant", "My name is Ollama and I"),
                ],
                "[INST] Hello friend![/INST] Hello human![INST] What is your name?[/INST] My name is Ollama and I",
            ),
            (
                &[
                    "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}{{ if .Prompt }}<|im_start|>user\n{{ .Prompt }}<|im_end|>\n{{ end }}<|im_start|>assistant\n{{ .Response }}<|im_end|>\n",
                    "\n{{- range $index, $_ := .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n",
                ],
                vec![
                    m("system", "You are a helpful assistant!"),
                    m("user", "Hello friend!"),
                    m("assistant", "Hello human!"),
                    m("user", "What is your name?"),
                ],
                "<|im_start|>system\nYou are a helpful assistant!<|im_end|>\n<|im_start|>user\nHello friend!<|im_end|>\n<|im_start|>assistant\nHello human!<|im_end|>\n<|im_start|>user\nWhat is your name?<|im_end|>\n<|im_start|>assistant\n",
            ),
        ];
        for (templates, messages, want) in cases {
            for t in templates {
                assert_eq!(render(t, &messages, &[]), want, "{t}");
            }
        }
    }

    fn tool_chat() -> (Vec<Value>, Vec<Value>) {
        let messages = vec![
            json!({"role": "system", "content": "You are a knowledgeable assistant. You can answer questions and perform tasks."}),
            json!({"role": "user", "content": "What's the weather like today in Paris?"}),
            json!({"role": "assistant", "content": "", "tool_calls": [{"id": "89a1e453", "type": "function",
                "function": {"name": "get_current_weather", "arguments": {"location": "Paris, France", "format": "celsius"}}}]}),
            json!({"role": "tool", "tool_call_id": "89a1e453", "content": "22"}),
            json!({"role": "assistant", "content": "The current temperature in Paris, France is 22 degrees Celsius."}),
            json!({"role": "user", "content": "What's the weather like today in San Francisco and Toronto?"}),
        ];
        // As rbee_infer::tools::tools_value writes a request's tool (OpenAI's key order).
        let tools = vec![json!({"type": "function", "function": {
            "name": "get_current_weather", "description": "Get the current weather",
            "parameters": {"type": "object", "properties": {
                "location": {"type": "string", "description": "The city and state, e.g. San Francisco, CA"},
                "format": {"type": "string", "enum": ["celsius", "fahrenheit"],
                    "description": "The temperature unit to use. Infer this from the user's location."}},
                "required": ["location", "format"]}}})];
        (messages, tools)
    }

    #[test]
    fn tool_templates_get_tools_and_calls_as_ollama_prints_them() {
        let (messages, tools) = tool_chat();
        // Ollama's server/testdata/tools/llama3.2.out, byte for byte.
        assert_eq!(
            render(LLAMA32_TOOLS, &messages, &tools),
            "<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n\nYou are a knowledgeable assistant. You can answer questions and perform tasks.When you receive a tool call response, use the output to format an answer to the orginal user question.\n\nYou are a helpful assistant with tool calling capabilities.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nWhat's the weather like today in Paris?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n{\"name\": \"get_current_weather\", \"parameters\": {\"format\":\"celsius\",\"location\":\"Paris, France\"}}<|eot_id|><|start_header_id|>ipython<|end_header_id|>\n\n22<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nThe current temperature in Paris, France is 22 degrees Celsius.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nGiven the following functions, please respond with a JSON for a function call with its proper arguments that best answers the given prompt.\n\nRespond in the format {\"name\": function name, \"parameters\": dictionary of argument name and its value}. Do not use variables.\n\n{\"type\":\"function\",\"function\":{\"name\":\"get_current_weather\",\"description\":\"Get the current weather\",\"parameters\":{\"type\":\"object\",\"required\":[\"location\",\"format\"],\"properties\":{\"format\":{\"type\":\"string\",\"description\":\"The temperature unit to use. Infer this from the user's location.\",\"enum\":[\"celsius\",\"fahrenheit\"]},\"location\":{\"type\":\"string\",\"description\":\"The city and state, e.g. San Francisco, CA\"}}}}}\n\nWhat's the weather like today in San Francisco and Toronto?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
        );
        let qwen = render(QWEN3_TOOLS, &messages, &tools);
        assert!(qwen.starts_with("<|im_start|>system\nYou are a knowledgeable assistant. You can answer questions and perform tasks.\n\n# Tools\n"), "{qwen}");
        assert!(qwen.contains("<tools>\n{\"type\": \"function\", \"function\": {\"name\":\"get_current_weather\",\"description\":\"Get the current weather\",\"parameters\":{\"type\":\"object\",\"required\":[\"location\",\"format\"],"), "{qwen}");
        assert!(qwen.contains("<|im_start|>assistant\n<tool_call>\n{\"name\": \"get_current_weather\", \"arguments\": {\"format\":\"celsius\",\"location\":\"Paris, France\"}}\n</tool_call><|im_end|>\n<|im_start|>user\n<tool_response>\n22\n</tool_response><|im_end|>\n"), "{qwen}");
        assert!(qwen.ends_with("<|im_start|>user\nWhat's the weather like today in San Francisco and Toronto?<|im_end|>\n<|im_start|>assistant\n"), "{qwen}");
        // Without tools the system block has no tool section.
        let plain = render(QWEN3_TOOLS, &messages[..2], &[]);
        assert_eq!(
            plain,
            "<|im_start|>system\nYou are a knowledgeable assistant. You can answer questions and perform tasks.<|im_end|>\n<|im_start|>user\nWhat's the weather like today in Paris?<|im_end|>\n<|im_start|>assistant\n"
        );
        assert!(Template::parse(QWEN3_TOOLS).unwrap().uses_tools());
        assert!(!Template::parse(PHI3).unwrap().uses_tools());
    }

    fn one(src: &str, data: Value) -> Result<String, TemplateError> {
        let t = Template::parse(src)?;
        let mut out = String::new();
        Exec::new(&data).run(&t.nodes, &data, &mut out)?;
        Ok(out)
    }

    #[test]
    fn the_go_template_subset() {
        let data = json!({"A": "x", "N": 3, "L": [1, 2, 3], "M": {"b": 2, "a": 1}, "E": "", "Z": [],
            "O": {"tool_calls": [{"function": {"name": "f"}}]}, "Response": ""});
        for (src, want) in [
            ("a  {{- .A -}}  b", "axb"),
            ("{{ if .E }}1{{ else if .A }}2{{ else }}3{{ end }}", "2"),
            ("{{ with .A }}[{{ . }}]{{ else }}none{{ end }}", "[x]"),
            ("{{ with .E }}[{{ . }}]{{ else }}none{{ end }}", "none"),
            (
                "{{ range $i, $v := .L }}{{ $i }}={{ $v }};{{ end }}",
                "0=1;1=2;2=3;",
            ),
            ("{{ range .M }}{{ . }}{{ end }}", "12"),
            ("{{ range $k, $v := .M }}{{ $k }}{{ end }}", "ab"),
            ("{{ range .Z }}x{{ else }}empty{{ end }}", "empty"),
            ("{{ range .Missing }}x{{ else }}none{{ end }}", "none"),
            (
                "{{ $x := 1 }}{{ if true }}{{ $x = 2 }}{{ end }}{{ $x }}",
                "2",
            ),
            (
                "{{ len .L }} {{ len .A }} {{ index .L 1 }} {{ index .M \"b\" }}",
                "3 1 2 2",
            ),
            (
                "{{ slice .L 1 }} {{ slice .L 1 2 }} {{ json .M }}",
                "[2,3] [2] {\"b\":2,\"a\":1}",
            ),
            ("{{ and .A .E }}|{{ or .E .A }}|{{ not .E }}", "|x|true"),
            (
                "{{ eq .N 1 2 3 }} {{ ne .A \"x\" }} {{ lt 1 2 }} {{ ge .N 4 }}",
                "true false true false",
            ),
            ("{{ .A | printf_free }}", ""),
            (
                "{{ (index .L 0) }}{{ .O.ToolCalls }}",
                "1[{\"function\":{\"name\":\"f\"}}]",
            ),
            ("{{ range .O.ToolCalls }}{{ .Function.Name }}{{ end }}", "f"),
            (
                "{{ $.A }}{{/* a comment */}}{{- /* trimmed */ -}} {{ print .N \"s\" 2 3 }}",
                "x3s2 3",
            ),
            ("{{ json \"<&>\" }}", "\"\\u003c\\u0026\\u003e\""),
            ("{{ .Missing }}{{ .O.Nothing.Deeper }}", ""),
        ] {
            if src.contains("printf_free") {
                assert!(one(src, data.clone()).is_err());
                continue;
            }
            assert_eq!(one(src, data.clone()).unwrap(), want, "{src}");
        }
    }

    #[test]
    fn what_is_not_supported_is_refused_by_name() {
        for (src, words) in [
            ("{{ define \"x\" }}{{ end }}", "`define`"),
            ("{{ template \"x\" }}", "`template`"),
            ("{{ block \"x\" . }}{{ end }}", "`block`"),
            ("{{ range .L }}{{ break }}{{ end }}", "`break`"),
            ("{{ printf \"%s\" .A }}", "`printf`"),
            ("{{ .A | upper }}", "`upper`"),
            ("{{ if .A }}", "no `end`"),
            ("{{ end }}", "`end` without"),
            ("{{ .A ", "never closed"),
            ("{{ \"open }}", "never closed"),
            ("{{ 'c' }}", "character literals"),
        ] {
            let e = Template::parse(src).unwrap_err().to_string();
            assert!(e.contains(words), "{src}: {e}");
        }
        // Runtime errors are errors, never a silently wrong prompt.
        assert!(one("{{ index .L 9 }}", json!({"L": [1]})).is_err());
        assert!(one("{{ .A.B }}", json!({"A": "s"})).is_err());
        assert!(one("{{ eq .A 1 }}", json!({"A": "s"})).is_err());
    }

    #[test]
    fn a_template_without_messages_or_response_gets_the_response_appended() {
        let t = Template::parse("{{ .Prompt }}").unwrap();
        assert!(!t.uses_messages());
        let out = t
            .render_chat(
                &[
                    json!({"role": "user", "content": "hi"}),
                    json!({"role": "assistant", "content": "yo"}),
                    json!({"role": "user", "content": "again"}),
                ],
                &[],
                &Map::new(),
            )
            .unwrap();
        assert_eq!(out, "hiyoagain");
    }
}
