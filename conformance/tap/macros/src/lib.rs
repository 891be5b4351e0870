//! The attributes `#[test]` and `#[global_allocator]` as
//! `aem-conformance-tap` reads the conformance suite's test files.
//!
//! The TAP binary compiles the test files as they are written
//! (`conformance/tests/*.rs`), as modules, without libtest: there,
//! `#[macro_use] extern crate aem_conformance_tap_macros;` puts these two
//! attribute macros ahead of the standard prelude's, so that
//!
//! - `#[test]` keeps its function (libtest's drops it from a build that is
//!   not a test harness) and registers it, before `main`, in the binary's
//!   table of tests (`crate::registry`), with what `#[ignore]` and
//!   `#[should_panic]` say;
//! - `#[global_allocator]` keeps its static as an ordinary one and names it
//!   `AEM_TAP_ALLOCATOR`, for the binary's allocator, which passes each
//!   test process's allocations to its own file's allocator.
//!
//! They expand to paths in the TAP crate (`crate::registry`): they are for
//! it alone.  Only `proc_macro` is used: no dependencies.

use proc_macro::{Delimiter, Group, Ident, Literal, Punct, Spacing, Span, TokenStream, TokenTree};

/// An error to report at `span`.
struct Error {
    span: Span,
    message: String,
}

impl Error {
    fn new(span: Span, message: impl Into<String>) -> Error {
        Error {
            span,
            message: message.into(),
        }
    }

    /// `compile_error!("message")`, placed at the span.
    fn into_tokens(self) -> TokenStream {
        let mut group = Group::new(
            Delimiter::Parenthesis,
            TokenTree::Literal(Literal::string(&self.message)).into(),
        );
        group.set_span(self.span);
        let mut bang = Punct::new('!', Spacing::Alone);
        bang.set_span(self.span);
        let mut semi = Punct::new(';', Spacing::Alone);
        semi.set_span(self.span);
        [
            TokenTree::Ident(Ident::new("compile_error", self.span)),
            TokenTree::Punct(bang),
            TokenTree::Group(group),
            TokenTree::Punct(semi),
        ]
        .into_iter()
        .collect()
    }
}

/// What `#[should_panic]` asks of a test, as the registry's expression.
enum ShouldPanic {
    No,
    Yes,
    Expected(Literal),
}

/// Whether `tt` is the punctuation `c`.
fn is_punct(tt: Option<&TokenTree>, c: char) -> bool {
    matches!(tt, Some(TokenTree::Punct(p)) if p.as_char() == c)
}

/// Whether `tt` is the identifier `word`.
fn is_ident(tt: Option<&TokenTree>, word: &str) -> bool {
    matches!(tt, Some(TokenTree::Ident(i)) if i.to_string() == word)
}

/// The string literal of `= "..."` (the tokens after an attribute's name).
fn eq_literal(rest: &[TokenTree]) -> Option<Literal> {
    match rest {
        [TokenTree::Punct(eq), TokenTree::Literal(lit)]
            if eq.as_char() == '=' && lit.to_string().starts_with('"') =>
        {
            Some(lit.clone())
        }
        _ => None,
    }
}

/// Split an item's tokens into its outer attributes (`#` and `[...]`
/// each) and the rest.
fn split_attributes(tokens: &[TokenTree]) -> (Vec<(&TokenTree, &Group)>, &[TokenTree]) {
    let mut attrs = Vec::new();
    let mut i = 0;
    while let (Some(hash @ TokenTree::Punct(p)), Some(TokenTree::Group(g))) =
        (tokens.get(i), tokens.get(i + 1))
    {
        if p.as_char() != '#' || g.delimiter() != Delimiter::Bracket {
            break;
        }
        attrs.push((hash, g));
        i += 2;
    }
    (attrs, &tokens[i..])
}

/// `#[test]`: keep the function and register it (see the crate's docs).
///
/// The function must be `fn name()`, optionally `pub` and returning a
/// value (`-> Result<(), E>`: it fails when the value reports failure, as
/// under libtest).  `#[ignore]`, `#[ignore = "why"]`, `#[should_panic]`
/// and `#[should_panic(expected = "...")]` on it are read and removed.
#[proc_macro_attribute]
pub fn test(attr: TokenStream, item: TokenStream) -> TokenStream {
    match test_impl(attr, item) {
        Ok(tokens) => tokens,
        Err(e) => e.into_tokens(),
    }
}

fn test_impl(attr: TokenStream, item: TokenStream) -> Result<TokenStream, Error> {
    if let Some(tt) = attr.into_iter().next() {
        return Err(Error::new(tt.span(), "#[test] takes no arguments"));
    }
    let tokens: Vec<TokenTree> = item.into_iter().collect();
    let (attrs, rest) = split_attributes(&tokens);

    let mut ignore: Option<Literal> = None;
    let mut ignored = false;
    let mut should_panic = ShouldPanic::No;
    let mut kept: Vec<TokenTree> = Vec::new();
    for (hash, group) in attrs {
        let inner: Vec<TokenTree> = group.stream().into_iter().collect();
        let name = match inner.first() {
            Some(TokenTree::Ident(i)) => i.to_string(),
            _ => String::new(),
        };
        match name.as_str() {
            "ignore" => {
                ignored = true;
                if inner.len() > 1 {
                    ignore = Some(eq_literal(&inner[1..]).ok_or_else(|| {
                        Error::new(group.span(), "expected #[ignore] or #[ignore = \"why\"]")
                    })?);
                }
            }
            "should_panic" => {
                should_panic = match &inner[1..] {
                    [] => ShouldPanic::Yes,
                    [TokenTree::Group(args)] if args.delimiter() == Delimiter::Parenthesis => {
                        let args: Vec<TokenTree> = args.stream().into_iter().collect();
                        match args.split_first() {
                            Some((TokenTree::Ident(k), rest)) if k.to_string() == "expected" => {
                                eq_literal(rest).map(ShouldPanic::Expected)
                            }
                            _ => None,
                        }
                        .ok_or_else(|| {
                            Error::new(
                                group.span(),
                                "expected #[should_panic] or #[should_panic(expected = \"...\")]",
                            )
                        })?
                    }
                    rest => ShouldPanic::Expected(eq_literal(rest).ok_or_else(|| {
                        Error::new(group.span(), "expected #[should_panic = \"...\"]")
                    })?),
                };
            }
            "cfg" | "cfg_attr" | "test" => {
                return Err(Error::new(
                    group.span(),
                    "aem-conformance-tap: not supported on a test",
                ));
            }
            _ => {
                kept.push(hash.clone());
                kept.push(TokenTree::Group(group.clone()));
            }
        }
    }

    // [pub [(..)]] fn name () [-> T] { .. }
    let mut i = 0;
    if is_ident(rest.get(i), "pub") {
        i += 1;
        if let Some(TokenTree::Group(g)) = rest.get(i) {
            if g.delimiter() == Delimiter::Parenthesis {
                i += 1;
            }
        }
    }
    let not_plain = |tt: Option<&TokenTree>| {
        Error::new(
            tt.map_or_else(Span::call_site, TokenTree::span),
            "aem-conformance-tap: a test must be a plain `fn name()` (not async, unsafe, const or extern; no generics or arguments)",
        )
    };
    if !is_ident(rest.get(i), "fn") {
        return Err(not_plain(rest.get(i)));
    }
    let name = match rest.get(i + 1) {
        Some(TokenTree::Ident(name)) => name.clone(),
        other => return Err(not_plain(other)),
    };
    match rest.get(i + 2) {
        Some(TokenTree::Group(g))
            if g.delimiter() == Delimiter::Parenthesis && g.stream().is_empty() => {}
        other => return Err(not_plain(other)),
    }
    let body = rest.len() - 1;
    if !matches!(rest.get(body), Some(TokenTree::Group(g)) if g.delimiter() == Delimiter::Brace)
        || body < i + 3
    {
        return Err(not_plain(rest.last()));
    }
    let returns = body > i + 3;
    if returns && !(is_punct(rest.get(i + 3), '-') && is_punct(rest.get(i + 4), '>')) {
        return Err(not_plain(rest.get(i + 3)));
    }
    if rest[i + 3..body]
        .iter()
        .any(|tt| is_ident(Some(tt), "where"))
    {
        return Err(not_plain(rest.get(i + 3)));
    }

    let run = if returns {
        format!("|| crate::registry::check_termination({name}())")
    } else {
        name.to_string()
    };
    let ignore = match (ignored, ignore) {
        (false, _) => "::core::option::Option::None".to_string(),
        (true, None) => "::core::option::Option::Some(\"\")".to_string(),
        (true, Some(why)) => format!("::core::option::Option::Some({why})"),
    };
    let should_panic = match should_panic {
        ShouldPanic::No => "crate::registry::ShouldPanic::No".to_string(),
        ShouldPanic::Yes => "crate::registry::ShouldPanic::Yes".to_string(),
        ShouldPanic::Expected(lit) => format!("crate::registry::ShouldPanic::Expected({lit})"),
    };
    let registration = format!(
        "const _: () = {{
            extern \"C\" fn aem_tap_register() {{
                static TEST: crate::registry::Test = crate::registry::Test::new(
                    ::core::module_path!(),
                    \"{name}\",
                    {run},
                    {ignore},
                    {should_panic},
                );
                crate::registry::register(&TEST);
            }}
            // Run before main, as the suite's own EXEC_PROBE is.
            #[used]
            #[link_section = \".init_array\"]
            static AEM_TAP_REGISTER: extern \"C\" fn() = aem_tap_register;
        }};"
    );
    let registration: TokenStream = registration
        .parse()
        .map_err(|_| Error::new(name.span(), "aem-conformance-tap: bad registration"))?;

    let mut out: TokenStream = kept.into_iter().collect();
    out.extend(rest.iter().cloned());
    out.extend(registration);
    Ok(out)
}

/// `#[global_allocator]`: keep the static, as an ordinary one, and add
/// `pub(crate) static AEM_TAP_ALLOCATOR`, a reference to it (see the
/// crate's docs).
#[proc_macro_attribute]
pub fn global_allocator(attr: TokenStream, item: TokenStream) -> TokenStream {
    match global_allocator_impl(attr, item) {
        Ok(tokens) => tokens,
        Err(e) => e.into_tokens(),
    }
}

fn global_allocator_impl(attr: TokenStream, item: TokenStream) -> Result<TokenStream, Error> {
    if let Some(tt) = attr.into_iter().next() {
        return Err(Error::new(
            tt.span(),
            "#[global_allocator] takes no arguments",
        ));
    }
    let tokens: Vec<TokenTree> = item.clone().into_iter().collect();
    let (_, rest) = split_attributes(&tokens);
    let at = rest
        .iter()
        .position(|tt| is_ident(Some(tt), "static"))
        .ok_or_else(|| Error::new(Span::call_site(), "#[global_allocator] must be on a static"))?;
    let name = match rest.get(at + 1) {
        Some(TokenTree::Ident(name)) if name.to_string() != "mut" => name.clone(),
        other => {
            return Err(Error::new(
                other.map_or_else(Span::call_site, TokenTree::span),
                "#[global_allocator] must be on a `static NAME`",
            ))
        }
    };
    let alias = format!(
        "/// This file's `#[global_allocator]`, for aem-conformance-tap.
        pub(crate) static AEM_TAP_ALLOCATOR: &(dyn ::core::alloc::GlobalAlloc + ::core::marker::Sync) = &{name};"
    );
    let alias: TokenStream = alias
        .parse()
        .map_err(|_| Error::new(name.span(), "aem-conformance-tap: bad allocator alias"))?;
    let mut out = item;
    out.extend(alias);
    Ok(out)
}
