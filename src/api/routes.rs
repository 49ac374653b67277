//! Matching a request to the routes the API files declared: `/things/:id` matches
//! `/things/42` with `id = "42"`. Of the routes a path matches, the one with the most literal
//! segments first wins (`/things/new` before `/things/:id`), then the first declared.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::js::RouteDecl;

/// One declared route, ready to match.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub method: String,
    segments: Vec<Segment>,
    /// The API file (its index in the pool) and the route's index in it.
    pub file: usize,
    pub index: usize,
    pub limit: Option<Duration>,
    /// `file:line:column` of the declaration.
    pub site: String,
}

#[derive(Debug, Clone, PartialEq)]
enum Segment {
    Literal(String),
    Param(String),
}

/// Whether two paths match the same requests (parameter names aside).
fn same_shape(a: &[Segment], b: &[Segment]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|pair| match pair {
            (Segment::Literal(x), Segment::Literal(y)) => x == y,
            (Segment::Param(_), Segment::Param(_)) => true,
            _ => false,
        })
}

/// What a path and method come to.
#[derive(Debug, PartialEq)]
pub enum Match<'a> {
    Found(&'a Route, BTreeMap<String, String>),
    /// The path is served, but not for this method: the methods it is served for.
    WrongMethod(Vec<String>),
    NotFound,
}

/// Every route of every API file.
#[derive(Debug, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
    /// Routes that repeat an earlier one's method and path (parameter names aside), left out:
    /// (file index, what to say).
    pub duplicates: Vec<(usize, String)>,
}

impl RouteTable {
    /// The routes of each file, in file order (`None` for a file that did not load). A route
    /// that repeats an earlier one (`GET /x/:id` after `GET /x/:key`) is left out and listed in
    /// `duplicates`: which of two files wins must not be a silent accident.
    pub fn new<'a>(files: impl IntoIterator<Item = Option<&'a [RouteDecl]>>) -> RouteTable {
        let mut routes: Vec<Route> = Vec::new();
        let mut duplicates = Vec::new();
        for (file, decls) in files.into_iter().enumerate() {
            for (index, d) in decls.unwrap_or_default().iter().enumerate() {
                let segments = segments(&d.path);
                if let Some(earlier) = routes.iter().find(|r| r.method == d.method && same_shape(&r.segments, &segments)) {
                    duplicates.push((
                        file,
                        format!("{}: {} {} is declared already at {}; this one is ignored", d.site, d.method, d.path, earlier.site),
                    ));
                    continue;
                }
                routes.push(Route { method: d.method.clone(), segments, file, index, limit: d.time_limit(), site: d.site.clone() });
            }
        }
        // Most literal segments first; the sort is stable, so declaration order breaks ties.
        routes.sort_by_key(|r| std::cmp::Reverse(r.segments.iter().filter(|s| matches!(s, Segment::Literal(_))).count()));
        RouteTable { routes, duplicates }
    }

    /// `path` is the part after `/api`, percent-encoded as it came.
    pub fn find(&self, method: &str, path: &str) -> Match<'_> {
        let Some(parts) = decoded_segments(path) else { return Match::NotFound };
        let mut methods = Vec::new();
        for route in &self.routes {
            let Some(params) = route.matches(&parts) else { continue };
            // HEAD is served by a GET route (the body is dropped).
            if route.method == method || (method == "HEAD" && route.method == "GET") {
                return Match::Found(route, params);
            }
            if !methods.contains(&route.method) {
                methods.push(route.method.clone());
            }
        }
        if methods.is_empty() {
            Match::NotFound
        } else {
            Match::WrongMethod(methods)
        }
    }

    /// (method, path, site) of every route, for listing.
    pub fn list(&self) -> Vec<(String, String, String)> {
        self.routes.iter().map(|r| (r.method.clone(), r.path(), r.site.clone())).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

impl Route {
    fn matches(&self, parts: &[String]) -> Option<BTreeMap<String, String>> {
        if parts.len() != self.segments.len() {
            return None;
        }
        let mut params = BTreeMap::new();
        for (segment, part) in self.segments.iter().zip(parts) {
            match segment {
                Segment::Literal(l) if l == part => {}
                Segment::Literal(_) => return None,
                Segment::Param(name) => {
                    params.insert(name.clone(), part.clone());
                }
            }
        }
        Some(params)
    }

    /// The path as declared.
    pub fn path(&self) -> String {
        let parts: Vec<String> = self
            .segments
            .iter()
            .map(|s| match s {
                Segment::Literal(l) => l.clone(),
                Segment::Param(p) => format!(":{p}"),
            })
            .collect();
        format!("/{}", parts.join("/"))
    }
}

fn segments(path: &str) -> Vec<Segment> {
    path.split('/')
        .filter(|s| !s.is_empty())
        .map(|s| match s.strip_prefix(':') {
            Some(name) => Segment::Param(name.to_string()),
            None => Segment::Literal(s.to_string()),
        })
        .collect()
}

/// The path's segments, percent-decoded (`None` when one is not UTF-8). A trailing slash is
/// ignored.
fn decoded_segments(path: &str) -> Option<Vec<String>> {
    path.split('/')
        .filter(|s| !s.is_empty())
        .map(|s| percent_encoding::percent_decode_str(s).decode_utf8().ok().map(|c| c.into_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decl(method: &str, path: &str) -> RouteDecl {
        RouteDecl { method: method.into(), path: path.into(), site: "x.js:1:1".into(), time_limit_ms: None }
    }

    #[test]
    fn literal_segments_win_and_params_are_decoded() {
        let a = [decl("GET", "/things/:id"), decl("GET", "/things/new"), decl("POST", "/things/:id")];
        let table = RouteTable::new([Some(&a[..])]);
        let Match::Found(r, params) = table.find("GET", "/things/a%20b%2Fc") else { panic!() };
        assert_eq!((r.index, params["id"].as_str()), (0, "a b/c"));
        let Match::Found(r, _) = table.find("GET", "/things/new/") else { panic!() };
        assert_eq!(r.index, 1);
        let Match::Found(r, _) = table.find("HEAD", "/things/1") else { panic!() };
        assert_eq!(r.index, 0);
        assert_eq!(table.find("DELETE", "/things/1"), Match::WrongMethod(vec!["GET".into(), "POST".into()]));
        assert_eq!(table.find("GET", "/things"), Match::NotFound);
        assert_eq!(table.find("GET", "/things/%FF"), Match::NotFound);
        assert_eq!(table.list()[0].1, "/things/new");
    }

    #[test]
    fn a_route_declared_twice_is_kept_once_and_reported() {
        let (a, b) = ([decl("GET", "/x/:id")], [decl("GET", "/x/:key"), decl("POST", "/x/:key"), decl("GET", "/x/new")]);
        let table = RouteTable::new([Some(&a[..]), Some(&b[..])]);
        assert_eq!(table.list().len(), 3);
        assert_eq!(table.duplicates.len(), 1);
        assert_eq!(table.duplicates[0].0, 1);
        assert!(table.duplicates[0].1.contains("GET /x/:key is declared already at x.js:1:1"), "{:?}", table.duplicates);
        let Match::Found(r, _) = table.find("GET", "/x/1") else { panic!() };
        assert_eq!(r.file, 0);
    }
}
