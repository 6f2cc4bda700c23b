// Stage 1, translate: a .metal file becomes a C++ translation unit for the simulator's runtime.
// Line numbers of the output equal the input's (#line), so compiler errors point at .metal lines.
#include <algorithm>
#include <cctype>
#include <cstring>
#include <set>
#include <sstream>

#include "check.h"
#include "internal.h"
#include "text.h"

namespace metalsim {
namespace detail {

const char* const kGeneratorVersion = "metalsim-gen-6";

namespace {

// ---------------------------------------------------------------- where a position comes from

// ---------------------------------------------------------------- #include "..."

// Whether a header's first two directives are `#ifndef NAME` and `#define NAME`.
bool has_include_guard(const std::string& text) {
  std::istringstream in(text);
  std::vector<std::string> directives;
  for (std::string line; directives.size() < 2 && std::getline(in, line);) {
    std::string t = trim(line);
    if (!t.empty() && t[0] == '#')
      directives.push_back(collapse_ws(t));
  }
  return directives.size() == 2 && directives[0].rfind("#ifndef ", 0) == 0 &&
         directives[1].rfind("#define ", 0) == 0 &&
         directives[0].substr(8) == directives[1].substr(8, directives[0].size() - 8);
}

// The quoted #includes that resolve in `dirs` (the including file's folder first) are inlined
// behind #line directives, so that kernels, threadgroup variables and function constants in
// headers are translated like those of the .metal file (MLX's kernels live in headers).
// <...> includes (metal_stdlib and friends) are left to the compiler.
std::string inline_includes(
    const std::string& text,
    const std::string& file,
    const std::vector<std::string>& dirs,
    std::set<std::string>& once,
    int depth) {
  if (depth > 32)
    throw SourceError{{file, 1}, "#include nesting is deeper than 32 (an include cycle?)"};
  std::string out;
  size_t i = 0;
  unsigned line = 1;
  while (i < text.size()) {
    size_t e = text.find('\n', i);
    if (e == std::string::npos)
      e = text.size();
    std::string l = text.substr(i, e - i);
    size_t h = l.find_first_not_of(" \t");
    std::string path;
    if (h != std::string::npos && l[h] == '#') {
      size_t k = l.find_first_not_of(" \t", h + 1);
      size_t q1 = l.find('"');
      if (k != std::string::npos && l.compare(k, 7, "include") == 0 && q1 != std::string::npos) {
        size_t q2 = l.find('"', q1 + 1);
        std::string name = q2 == std::string::npos ? "" : l.substr(q1 + 1, q2 - q1 - 1);
        std::vector<std::string> search = dirs;
        if (file.find('/') != std::string::npos)
          search.insert(search.begin(), dirname_of(file));
        for (auto& d : search)
          if (!name.empty() && file_exists(d + "/" + name)) {
            path = absolute(d + "/" + name);
            break;
          }
      }
    }
    if (path.empty()) {
      out += l;
    } else if (!once.count(path)) {
      std::string content = read_file(path);
      if (content.find("#pragma once") != std::string::npos || has_include_guard(content))
        once.insert(path);
      out += "#line 1 " + c_string(path) + "\n";
      out += inline_includes(content, path, dirs, once, depth + 1);
      if (out.back() != '\n')
        out += '\n';
      out += "#line " + std::to_string(line + 1) + " " + c_string(file);
    }
    if (e < text.size())
      out += '\n';
    i = e + 1;
    ++line;
  }
  return out;
}

// ---------------------------------------------------------------- kernels

const char* kBuiltins[] = {
    "thread_position_in_grid",
    "thread_position_in_threadgroup",
    "threadgroup_position_in_grid",
    "thread_index_in_threadgroup",
    "threads_per_threadgroup",
    "threadgroups_per_grid",
    "threads_per_grid",
    "simdgroup_index_in_threadgroup",
    "thread_index_in_simdgroup",
    "threads_per_simdgroup",
    "simdgroups_per_threadgroup",
    "thread_execution_width",
    "dispatch_threads_per_threadgroup",
    "thread_index_in_quadgroup",
    "quadgroup_index_in_threadgroup",
    "quadgroups_per_threadgroup",
};

const char* kStdAttributes[] = {
    "maybe_unused",
    "likely",
    "unlikely",
    "nodiscard",
    "fallthrough",
    "noreturn",
    "deprecated",
    "gnu",
    "clang",
    "carries_dependency"};

struct Attr {
  size_t begin, end; // [[ ... ]] span
  std::string text;  // inside, trimmed
};

// All [[...]] attribute blocks of the masked text.
std::vector<Attr> find_attributes(const std::string& m) {
  std::vector<Attr> out;
  for (size_t i = 0; i + 1 < m.size(); ++i) {
    if (m[i] == '[' && m[i + 1] == '[') {
      size_t e = m.find("]]", i + 2);
      if (e == std::string::npos)
        break;
      out.push_back({i, e + 2, trim(m.substr(i + 2, e - i - 2))});
      i = e + 1;
    }
  }
  return out;
}

std::string first_word(const std::string& text) {
  std::string first;
  for (char c : text) {
    if (!is_ident_char(c))
      break;
    first += c;
  }
  return first;
}

bool is_std_attribute(const std::string& text) {
  std::string first = first_word(text);
  for (const char* s : kStdAttributes)
    if (first == s)
      return true;
  return false;
}

struct Param {
  std::string type; // e.g. "device const float*"
  std::string name;
  std::string kind; // "buffer", "threadgroup", "builtin"
  unsigned index = 0;
  std::string builtin;
  std::string function_constant; // [[function_constant(name)]]: bound only when name is true
};

struct TgDeclGen {
  std::string name;
  unsigned line;
};

struct Kernel {
  std::string name;
  Location loc;
  bool is_template = false;
  std::vector<Param> params;
  std::vector<TgDeclGen> tg_decls;
  unsigned max_threads = 0;
};

// A kernel as the library lists it: a kernel function, or a template kernel instantiated with
// `template [[host_name("name")]] [[kernel]] decltype(f<args>) f<args>;`.
struct KernelEntry {
  std::string host_name;
  size_t kernel; // index into the file's kernels
  std::string targs;
  Location loc;
};

// Turns `1.5h` (a half literal) into `half(1.5)`.
void rewrite_half_literals(const std::string& m, std::string& out_text) {
  std::string r;
  size_t n = m.size(), i = 0, last = 0;
  while (i < n) {
    char c = m[i];
    bool starts = (std::isdigit((unsigned char)c) ||
                   (c == '.' && i + 1 < n && std::isdigit((unsigned char)m[i + 1]))) &&
                  (i == 0 || (!is_ident_char(m[i - 1]) && m[i - 1] != '.'));
    if (!starts) {
      ++i;
      continue;
    }
    size_t j = i;
    if (c == '0' && j + 1 < n && (m[j + 1] == 'x' || m[j + 1] == 'X')) {
      j += 2;
      while (j < n && std::isxdigit((unsigned char)m[j]))
        ++j;
      i = j;
      continue;
    }
    while (j < n && (std::isdigit((unsigned char)m[j]) || m[j] == '.'))
      ++j;
    if (j < n && (m[j] == 'e' || m[j] == 'E')) {
      size_t k = j + 1;
      if (k < n && (m[k] == '+' || m[k] == '-'))
        ++k;
      if (k < n && std::isdigit((unsigned char)m[k])) {
        while (k < n && std::isdigit((unsigned char)m[k]))
          ++k;
        j = k;
      }
    }
    if (j < n && (m[j] == 'h' || m[j] == 'H') && (j + 1 >= n || !is_ident_char(m[j + 1]))) {
      r += out_text.substr(last, i - last);
      r += "half(" + out_text.substr(i, j - i) + ")";
      last = j + 1;
    }
    i = j;
  }
  r += out_text.substr(last);
  out_text = r;
}

// Replaces each `constant` of the masked text m by `const` (padded to the same length) in out,
// except inside [[...]], inside the spans `skip`, and where the neighbouring declaration
// specifiers already contain `const` or `constexpr` (`const constant int& n`,
// `constant constexpr uint A = 4;`): C++ rejects a second `const`.
void rewrite_constant_qualifiers(
    const std::string& m, const std::vector<std::pair<size_t, size_t>>& skip, std::string& out) {
  const std::string kw = "constant";
  std::vector<Attr> attrs = find_attributes(m);
  auto word_before = [&](size_t end, size_t& begin) { // the identifier ending at end, if any
    begin = end;
    while (begin > 0 && is_ident_char(m[begin - 1]))
      --begin;
    return m.substr(begin, end - begin);
  };
  for (size_t i = m.find(kw); i != std::string::npos; i = m.find(kw, i + kw.size())) {
    if ((i > 0 && is_ident_char(m[i - 1])) ||
        (i + kw.size() < m.size() && is_ident_char(m[i + kw.size()])))
      continue;
    bool skipped = false;
    for (auto& a : attrs)
      if (i >= a.begin && i < a.end)
        skipped = true;
    for (auto& [a, b] : skip)
      if (i >= a && i < b)
        skipped = true;
    if (skipped)
      continue;
    bool has_const = false;
    // Specifiers before it: identifiers separated by spaces, back to the previous punctuation.
    for (size_t e = i; e > 0;) {
      while (e > 0 && std::isspace((unsigned char)m[e - 1]))
        --e;
      size_t b;
      std::string w = word_before(e, b);
      if (w.empty())
        break;
      if (w == "const" || w == "constexpr")
        has_const = true;
      e = b;
    }
    // Specifiers after it, up to the declarator (`*`, `&`, a name followed by `=`, ...).
    for (size_t q = i + kw.size(); q < m.size();) {
      q = skip_ws(m, q);
      size_t b = q;
      while (q < m.size() && is_ident_char(m[q]))
        ++q;
      if (q == b)
        break;
      std::string w = m.substr(b, q - b);
      if (w == "const" || w == "constexpr")
        has_const = true;
    }
    if (!has_const)
      out.replace(i, kw.size(), "const   ");
  }
}

// Swizzles: `v.xy`, `v.zyx`, `c.rgba` become `v.template swz<0, 1>()` (a copy), and on the left of
// an assignment (`v.xy = ...`, `v.zw += ...`) `v.template swz_ref<2, 3>()`, a reference to the
// components. Single components (`v.x`) are members already.
void rewrite_swizzles(const std::string& m, std::string& out_text) {
  std::string r;
  size_t n = m.size(), last = 0;
  for (size_t i = 0; i + 2 < n; ++i) {
    bool dot = m[i] == '.' && (i == 0 || m[i - 1] != '.');
    bool arrow = m[i] == '>' && i > 0 && m[i - 1] == '-';
    if (!dot && !arrow)
      continue;
    if (dot && i > 0 && std::isdigit((unsigned char)m[i - 1])) {
      size_t b = i;
      while (b > 0 && (is_ident_char(m[b - 1]) || m[b - 1] == '.'))
        --b;
      if (std::isdigit((unsigned char)m[b]))
        continue; // a number (1.e5), not a member
    }
    size_t a = i + 1, e = a;
    while (e < n && is_ident_char(m[e]))
      ++e;
    std::string w = m.substr(a, e - a);
    if (w.size() < 2 || w.size() > 4)
      continue;
    const char* sets[] = {"xyzw", "rgba"};
    std::string idx;
    for (const char* set : sets) {
      std::string t;
      for (char c : w) {
        const char* f = std::strchr(set, c);
        if (!f || !c) {
          t.clear();
          break;
        }
        t += (t.empty() ? "" : ", ") + std::to_string(f - set);
      }
      if (!t.empty()) {
        idx = t;
        break;
      }
    }
    if (idx.empty())
      continue;
    size_t q = skip_ws(m, e);
    if (q < n && m[q] == '(')
      continue; // a member function called xy()
    bool written = (q < n && m[q] == '=' && (q + 1 >= n || m[q + 1] != '=')) ||
                   (q + 1 < n && m[q + 1] == '=' && std::strchr("+-*/%&|^", m[q]));
    r += out_text.substr(last, a - last);
    r += std::string(written ? "template swz_ref<" : "template swz<") + idx + ">()";
    last = e;
    i = e - 1;
  }
  r += out_text.substr(last);
  out_text = r;
}

std::string without_address_spaces(const std::string& s) {
  std::string r;
  for (size_t i = 0; i < s.size();) {
    if (is_ident_char(s[i]) && (i == 0 || !is_ident_char(s[i - 1]))) {
      size_t e = i;
      while (e < s.size() && is_ident_char(s[e]))
        ++e;
      std::string w = s.substr(i, e - i);
      if (w != "thread" && w != "threadgroup" && w != "device" && w != "constant")
        r += w;
      i = e;
    } else {
      r += s[i++];
    }
  }
  return collapse_ws(r);
}

// MSL overloads functions on address spaces: member functions on the address space of `this`
// (`complex_t() thread`, `complex_t() threadgroup`, ...) and functions on those of their
// parameters (`operator+=(thread complex_t<T>&, ...)`, `operator+=(device complex_t<T>&, ...)`).
// The simulator has one address space, so of each set of such overloads the `thread` one (else
// the first) is kept; the others are blanked in `out`.
void drop_address_space_overloads(const std::string& m, std::string& out) {
  struct Fn {
    std::string key;
    bool is_thread;
    size_t begin, end;
  };
  std::vector<Fn> fns;
  auto word = [&](size_t at, const char* w) {
    size_t n = std::strlen(w);
    return m.compare(at, n, w) == 0 && (at + n >= m.size() || !is_ident_char(m[at + n]));
  };
  for (size_t i = 0; i < m.size(); ++i) {
    if (m[i] != ')')
      continue;
    size_t q = skip_ws(m, i + 1);
    if (word(q, "const"))
      q = skip_ws(m, q + 5);
    std::string qual;
    for (const char* w : {"thread", "threadgroup", "device", "constant"})
      if (word(q, w))
        qual = w;
    size_t after = qual.empty() ? q : skip_ws(m, q + qual.size());
    if (after >= m.size())
      continue;
    bool body = m[after] == '{' || (m[after] == ':' && m.compare(after, 2, "::") != 0);
    if (!(body || (m[after] == ';' && !qual.empty())))
      continue;
    int depth = 0;
    size_t open = std::string::npos;
    for (size_t k = i + 1; k-- > 0;) {
      if (m[k] == ')')
        ++depth;
      else if (m[k] == '(' && --depth == 0) {
        open = k;
        break;
      }
    }
    if (open == std::string::npos)
      continue;
    std::string params = m.substr(open + 1, i - open - 1);
    if (qual.empty() && !has_word(params, "thread") && !has_word(params, "threadgroup") &&
        !has_word(params, "device") && !has_word(params, "constant"))
      continue;
    size_t nb = open;
    while (nb > 0 && std::isspace((unsigned char)m[nb - 1]))
      --nb;
    size_t ne = nb;
    while (nb > 0 && is_ident_char(m[nb - 1]))
      --nb;
    std::string name = m.substr(nb, ne - nb);
    static const char* kNotFunctions[] = {
        "if", "for", "while", "switch", "return", "sizeof", "decltype", "catch", "alignof"};
    bool statement = false;
    for (const char* w : kNotFunctions)
      statement = statement || name == w;
    if (statement)
      continue;
    // The declaration starts after the previous ; { } or access label.
    size_t begin = nb;
    while (begin > 0 && m[begin - 1] != ';' && m[begin - 1] != '{' && m[begin - 1] != '}' &&
           !(m[begin - 1] == ':' && (begin < 2 || m[begin - 2] != ':') && m[begin] != ':'))
      --begin;
    std::string signature = m.substr(begin, after - begin);
    if (name.empty() && !has_word(signature, "operator"))
      continue;
    // The end: the body's closing brace (after an initializer list), or the `;`.
    size_t end;
    if (m[after] == ';') {
      end = after + 1;
    } else {
      size_t brace = after;
      if (m[after] == ':') { // initializers `a(x), b{y}`: the body is the `{` after `)` or `}`
        size_t k = after + 1;
        while (k < m.size()) {
          if (m[k] == '(' || (m[k] == '{' && is_ident_char(m[k - 1 - (m[k - 1] == ' ')]))) {
            k = match_bracket(m, k);
            if (k == std::string::npos)
              break;
            ++k;
          } else if (m[k] == '{') {
            break;
          } else {
            ++k;
          }
        }
        brace = k;
      }
      if (brace == std::string::npos || brace >= m.size() || m[brace] != '{')
        continue;
      size_t close = match_bracket(m, brace);
      if (close == std::string::npos)
        continue;
      end = close + 1;
      size_t semi = skip_ws(m, end);
      if (semi < m.size() && m[semi] == ';')
        end = semi + 1;
    }
    fns.push_back({without_address_spaces(signature), has_word(signature, "thread"), begin, end});
  }
  for (size_t a = 0; a < fns.size(); ++a) {
    size_t keep = fns.size();
    for (size_t b = 0; b < fns.size(); ++b)
      if (fns[b].key == fns[a].key &&
          (keep == fns.size() || (fns[b].is_thread && !fns[keep].is_thread)))
        keep = b;
    if (keep == a)
      continue;
    for (size_t k = fns[a].begin; k < fns[a].end; ++k)
      if (out[k] != '\n')
        out[k] = ' ';
  }
}

// The identifiers a template parameter list declares (`typename T, int D, int V = D`: T, D, V).
std::vector<std::string> template_param_names(const std::string& m, size_t a, size_t b) {
  std::vector<std::string> names;
  for (auto [pa, pb] : split_commas(m, a, b)) {
    std::string p = m.substr(pa, pb - pa);
    p = p.substr(0, p.find('='));
    bool pack = p.find("...") != std::string::npos;
    size_t e = p.size();
    while (e > 0 && !is_ident_char(p[e - 1]))
      --e;
    size_t s0 = e;
    while (s0 > 0 && is_ident_char(p[s0 - 1]))
      --s0;
    if (s0 < e)
      names.push_back(p.substr(s0, e - s0) + (pack ? "..." : ""));
  }
  return names;
}

// `src` is one .metal file with its quoted includes inlined (see inline_includes). Rewrites it
// into C++ for the runtime and collects its kernels. Line numbers of the output equal the
// input's.
std::string rewrite_file(
    const std::string& src,
    const std::string& file,
    std::vector<Kernel>& kernels,
    std::vector<KernelEntry>& entries,
    std::vector<std::string>& warnings) {
  const std::string m = mask_source(src);
  std::vector<KernelSource> sources; // what the strict-MSL rules look at
  std::string out = src; // edits are applied with the same offsets (replacements keep length
                         // where possible; threadgroup declarations are rebuilt below)
  auto where = [&](size_t pos) { return locate(src, pos, file); };
  auto err = [&](size_t pos, const std::string& msg) { throw SourceError{where(pos), msg}; };
  auto word_at = [&](size_t i, const char* w) {
    size_t n = std::strlen(w);
    return m.compare(i, n, w) == 0 && (i == 0 || !is_ident_char(m[i - 1])) &&
           (i + n >= m.size() || !is_ident_char(m[i + n]));
  };

  std::vector<Attr> attrs = find_attributes(m);
  struct Edit {
    size_t begin, end;
    std::string text;
  };
  std::vector<Edit> edits;
  std::vector<std::pair<size_t, size_t>> param_spans; // kernel parameter lists

  // 1. Explicit instantiations of template kernels:
  //    template [[host_name("name")]] [[kernel]] decltype(f<args>) f<args>;
  struct Inst {
    std::string host_name, fname, targs;
    size_t begin, end;
  };
  std::vector<Inst> insts;
  for (size_t t = m.find("template"); t != std::string::npos; t = m.find("template", t + 1)) {
    if (!word_at(t, "template"))
      continue;
    size_t j = skip_ws(m, t + 8);
    if (m.compare(j, 2, "[[") != 0)
      continue;
    Inst in;
    in.begin = t;
    bool is_kernel = false;
    while (m.compare(j, 2, "[[") == 0) {
      size_t e = m.find("]]", j);
      if (e == std::string::npos)
        err(j, "unterminated [[ attribute");
      std::string text = trim(m.substr(j + 2, e - j - 2));
      if (first_word(text) == "host_name") {
        std::string raw = src.substr(j + 2, e - j - 2);
        size_t q1 = raw.find('"'), q2 = raw.rfind('"');
        if (q1 == std::string::npos || q2 <= q1)
          err(j, "[[host_name(...)]] takes a string literal: [[host_name(\"my_kernel_f32\")]]");
        in.host_name = raw.substr(q1 + 1, q2 - q1 - 1);
      } else if (text == "kernel") {
        is_kernel = true;
      }
      j = skip_ws(m, e + 2);
    }
    if (!is_kernel)
      continue;
    if (in.host_name.empty())
      err(t,
          "an instantiated kernel needs a name: template [[host_name(\"name\")]] [[kernel]] "
          "decltype(f<T>) f<T>;");
    if (!word_at(j, "decltype"))
      err(j, "expected decltype(f<...>) f<...>; after [[kernel]] in a kernel instantiation");
    size_t open = skip_ws(m, j + 8);
    size_t close = m[open] == '(' ? match_bracket(m, open) : std::string::npos;
    if (close == std::string::npos)
      err(j, "cannot parse the kernel instantiation's decltype(...)");
    size_t n0 = skip_ws(m, close + 1), n1 = n0;
    while (n1 < m.size() && (is_ident_char(m[n1]) || m[n1] == ':'))
      ++n1;
    in.fname = m.substr(n0, n1 - n0);
    size_t lt = skip_ws(m, n1);
    size_t gt = m[lt] == '<' ? match_bracket(m, lt) : std::string::npos;
    size_t semi = gt == std::string::npos ? gt : skip_ws(m, gt + 1);
    if (in.fname.empty() || semi == std::string::npos || m[semi] != ';')
      err(n0, "expected f<template arguments>; at the end of the kernel instantiation");
    in.targs = collapse_ws(src.substr(lt + 1, gt - lt - 1));
    in.end = semi + 1;
    insts.push_back(in);
    t = semi;
  }
  auto in_instantiation = [&](size_t pos) {
    for (auto& in : insts)
      if (pos >= in.begin && pos < in.end)
        return true;
    return false;
  };

  // 2. Kernel definitions: the `kernel` keyword or a [[kernel]] attribute.
  auto next_kernel = [&](size_t from, size_t& kw_begin, size_t& after) -> bool {
    for (size_t i = from; i < m.size(); ++i) {
      if (word_at(i, "kernel") && !in_instantiation(i)) {
        bool in_attr = false;
        for (auto& a : attrs)
          if (i > a.begin && i < a.end) {
            in_attr = true;
            kw_begin = a.begin;
            after = a.end;
          }
        if (!in_attr) {
          kw_begin = i;
          after = i + 6;
        }
        return true;
      }
    }
    return false;
  };

  size_t pos = 0, kb, ka;
  while (next_kernel(pos, kb, ka)) {
    size_t i = skip_ws(m, ka);
    while (i + 1 < m.size() && m[i] == '[' && m[i + 1] == '[') {
      size_t e = m.find("]]", i);
      i = skip_ws(m, e + 2);
    }
    if (!word_at(i, "void")) {
      pos = ka;
      if (m.compare(kb, 2, "[[") == 0)
        err(kb, "a kernel must return void");
      continue;
    }
    Kernel k;
    KernelSource ks;
    // template <...> in front of the kernel: a template kernel, compiled for each of its
    // instantiations.
    std::string tag_args;
    {
      size_t b = kb;
      while (b > 0 && std::isspace((unsigned char)m[b - 1]))
        --b;
      if (b > 0 && m[b - 1] == '>') {
        int depth = 0;
        size_t lt = std::string::npos;
        for (size_t q = b; q-- > 0;) {
          if (m[q] == '>')
            ++depth;
          else if (m[q] == '<' && --depth == 0) {
            lt = q;
            break;
          }
        }
        size_t tw = lt;
        while (tw != std::string::npos && tw > 0 && std::isspace((unsigned char)m[tw - 1]))
          --tw;
        if (lt != std::string::npos && tw >= 8 && word_at(tw - 8, "template")) {
          k.is_template = true;
          std::string names;
          for (auto& n : template_param_names(m, lt + 1, b - 1))
            names += (names.empty() ? "" : ", ") + n;
          tag_args = "<" + names + ">";
        }
      }
    }
    i = skip_ws(m, i + 4);
    size_t nb = i;
    while (i < m.size() && is_ident_char(m[i]))
      ++i;
    k.name = m.substr(nb, i - nb);
    k.loc = where(nb);
    i = skip_ws(m, i);
    if (k.name.empty() || i >= m.size() || m[i] != '(')
      err(nb, "cannot parse the kernel declaration");
    size_t close = match_bracket(m, i);
    if (close == std::string::npos)
      err(i, "unbalanced parentheses in the kernel's parameter list");
    param_spans.push_back({i + 1, close});
    // Parameters.
    std::set<unsigned> seen_buffers, seen_tg;
    for (auto [a, b] : split_commas(m, i + 1, close)) {
      std::string ptext = m.substr(a, b - a);
      if (trim(ptext).empty())
        continue;
      size_t at_pos = a + ptext.find_first_not_of(" \t\n\r");
      Param p;
      std::vector<std::string> pattrs;
      std::string stripped;
      for (size_t q = 0; q < ptext.size();) {
        if (ptext.compare(q, 2, "[[") == 0) {
          size_t e = ptext.find("]]", q);
          std::string inside = ptext.substr(q + 2, e - q - 2);
          for (auto [x, y] : split_commas(inside, 0, inside.size()))
            pattrs.push_back(trim(inside.substr(x, y - x)));
          q = e + 2;
          stripped += ' ';
        } else {
          stripped += ptext[q++];
        }
      }
      stripped = trim(stripped);
      size_t e = stripped.size();
      while (e > 0 && !is_ident_char(stripped[e - 1]))
        --e;
      size_t s0 = e;
      while (s0 > 0 && is_ident_char(stripped[s0 - 1]))
        --s0;
      p.name = stripped.substr(s0, e - s0);
      p.type = collapse_ws(trim(stripped.substr(0, s0)));
      if (p.name.empty() || p.type.empty())
        err(at_pos,
            "kernel '" + k.name + "': cannot parse the parameter '" + collapse_ws(trim(ptext)) +
                "'");
      for (const std::string& at : pattrs) {
        std::string at2 = collapse_ws(at);
        unsigned idx = 0;
        char tail = 0;
        if (is_std_attribute(at2)) {
          continue;
        } else if (
            std::sscanf(at2.c_str(), "buffer ( %u %c", &idx, &tail) == 2 ||
            std::sscanf(at2.c_str(), "buffer(%u%c", &idx, &tail) == 2) {
          if (idx > 30)
            err(at_pos,
                "kernel '" + k.name + "': [[buffer(" + std::to_string(idx) +
                    ")]] is out of range (0..30)");
          if (!seen_buffers.insert(idx).second)
            err(at_pos,
                "kernel '" + k.name + "': two parameters use [[buffer(" + std::to_string(idx) +
                    ")]]");
          p.kind = "buffer";
          p.index = idx;
        } else if (
            std::sscanf(at2.c_str(), "threadgroup ( %u %c", &idx, &tail) == 2 ||
            std::sscanf(at2.c_str(), "threadgroup(%u%c", &idx, &tail) == 2) {
          if (idx > 30)
            err(at_pos,
                "kernel '" + k.name + "': [[threadgroup(" + std::to_string(idx) +
                    ")]] is out of range (0..30)");
          if (!seen_tg.insert(idx).second)
            err(at_pos,
                "kernel '" + k.name + "': two parameters use [[threadgroup(" + std::to_string(idx) +
                    ")]]");
          if (p.type.find('*') == std::string::npos)
            err(at_pos,
                "kernel '" + k.name + "': [[threadgroup(" + std::to_string(idx) +
                    ")]] parameter '" + p.name + "' must be a pointer");
          p.kind = "threadgroup";
          p.index = idx;
        } else if (first_word(at2) == "function_constant") {
          size_t o = at2.find('('), c = at2.rfind(')');
          if (o == std::string::npos || c == std::string::npos || c < o)
            err(at_pos, "kernel '" + k.name + "': expected [[function_constant(name)]]");
          p.function_constant = trim(at2.substr(o + 1, c - o - 1));
        } else {
          bool found = false;
          for (const char* bname : kBuiltins)
            if (at2 == bname)
              found = true;
          if (!found)
            err(at_pos,
                "kernel '" + k.name + "': parameter '" + p.name + "' has the attribute [[" + at2 +
                    "]], which metalsim does not support (buffers, threadgroup memory and the "
                    "compute builtins only)");
          p.kind = "builtin";
          p.builtin = at2;
        }
      }
      if (p.kind.empty())
        err(at_pos,
            "kernel '" + k.name + "': parameter '" + p.name +
                "' needs an attribute: [[buffer(n)]], [[threadgroup(n)]] or a builtin such as "
                "[[thread_position_in_grid]]");
      k.params.push_back(p);
      ks.params.push_back({p.name, p.type, p.kind, at_pos});
    }
    // Body.
    size_t j = skip_ws(m, close + 1);
    while (j + 1 < m.size() && m[j] == '[' && m[j + 1] == '[')
      j = skip_ws(m, m.find("]]", j) + 2);
    if (j >= m.size() || m[j] != '{')
      err(close, "kernel '" + k.name + "': expected the body '{' after the parameters");
    size_t body_end = match_bracket(m, j);
    if (body_end == std::string::npos)
      err(j, "kernel '" + k.name + "': unbalanced braces in the body");
    // [[max_total_threads_per_threadgroup(n)]] on this declaration
    for (auto& at : attrs) {
      const char* key = "max_total_threads_per_threadgroup";
      size_t q = at.text.find(key);
      unsigned mt = 0;
      if (at.begin >= pos && at.end <= j && q != std::string::npos &&
          std::sscanf(at.text.c_str() + q + std::strlen(key), " ( %u", &mt) == 1)
        k.max_threads = mt;
    }
    const std::string tag = "::metalsim::rt::KernelTag<&" + k.name + tag_args + ">";
    // Threadgroup declarations in the body.
    for (size_t q = j + 1; q < body_end; ++q) {
      if (!word_at(q, "threadgroup"))
        continue;
      size_t pb = q;
      while (pb > j && std::isspace((unsigned char)m[pb - 1]))
        --pb;
      char prev = m[pb - 1];
      if (!(prev == ';' || prev == '{' || prev == '}'))
        continue;
      // statement end
      size_t semi = q;
      int depth = 0;
      for (; semi < body_end; ++semi) {
        char c = m[semi];
        if (c == '(' || c == '[' || c == '{')
          ++depth;
        else if (c == ')' || c == ']' || c == '}')
          --depth;
        else if (c == ';' && depth == 0)
          break;
      }
      std::string decl = m.substr(q + 11, semi - q - 11);
      // `top` is decl with the insides of (), [] and {} blanked: a `*` or `=` in an array size
      // (`threadgroup float t[A * B];`) is not a pointer declarator or an initializer.
      const std::string top = blank_nested(decl);
      if (top.find('(') != std::string::npos)
        continue; // e.g. a pointer to an array: not storage
      auto parts = split_declarators(top);
      size_t n_pointers = 0;
      for (auto [pa, pb] : parts) {
        std::string t = top.substr(pa, pb - pa);
        t = t.substr(0, t.find('=')); // the declarator, not its initializer
        if (t.find('*') != std::string::npos || t.find('&') != std::string::npos)
          ++n_pointers;
      }
      if (n_pointers == parts.size())
        continue; // pointers/references to threadgroup memory
      if (n_pointers != 0)
        err(q,
            "kernel '" + k.name +
                "': this statement declares threadgroup arrays and pointers "
                "together: declare the pointers in a statement of their own");
      if (top.find('=') != std::string::npos)
        err(q,
            "kernel '" + k.name +
                "': a threadgroup variable cannot have an initializer "
                "(threadgroup memory starts uninitialized; assign it, then threadgroup_barrier)");
      std::string type;
      std::string repl;
      size_t nl = std::count(src.begin() + q, src.begin() + semi, '\n');
      for (size_t pi = 0; pi < parts.size(); ++pi) {
        auto [pa, pb] = parts[pi];
        size_t br = top.find('[', pa);
        if (br >= pb)
          br = std::string::npos;
        std::string head = trim(decl.substr(pa, (br == std::string::npos ? pb : br) - pa));
        std::string dims =
            br == std::string::npos ? "" : collapse_ws(trim(decl.substr(br, pb - br)));
        if (!dims.empty() && dims.back() != ']')
          err(q, "kernel '" + k.name + "': cannot parse the threadgroup declaration");
        size_t ns = head.size();
        while (ns > 0 && is_ident_char(head[ns - 1]))
          --ns;
        std::string name = head.substr(ns);
        std::string before = collapse_ws(trim(head.substr(0, ns)));
        if (pi == 0)
          type = before;
        else if (!before.empty())
          err(q, "kernel '" + k.name + "': cannot parse the threadgroup declaration");
        if (name.empty() || type.empty() || std::isdigit((unsigned char)name[0]))
          err(q, "kernel '" + k.name + "': cannot parse the threadgroup declaration");
        unsigned idx = unsigned(k.tg_decls.size());
        k.tg_decls.push_back({name, where(q).line});
        std::string slot = "::metalsim::rt::tg_decl<" + type + dims + ", " + tag + ", " +
                           std::to_string(idx) + ">()";
        if (dims.empty())
          repl += type + "& " + name + " = *" + slot + ";";
        else
          repl += type + " (&" + name + ")" + dims + " = *" + slot + ";";
      }
      repl += std::string(nl, '\n');
      edits.push_back({q, semi + 1, repl});
      q = semi;
    }
    ks.name = k.name;
    ks.body_begin = j;
    ks.body_end = body_end;
    for (auto& tgd : k.tg_decls)
      ks.threadgroup_arrays.push_back(tgd.name);
    sources.push_back(ks);
    size_t ki = kernels.size();
    if (!k.is_template)
      entries.push_back({k.name, ki, "", k.loc});
    kernels.push_back(k);
    pos = body_end + 1;
  }
  for (auto& in : insts) {
    size_t ki = kernels.size();
    for (size_t q = 0; q < kernels.size(); ++q)
      if (kernels[q].is_template && kernels[q].name == in.fname)
        ki = q;
    if (ki == kernels.size())
      err(in.begin,
          "kernel instantiation '" + in.host_name + "': no template kernel named '" + in.fname +
              "' ([[kernel]] on a function template) is defined before it");
    entries.push_back({in.host_name, ki, "<" + in.targs + ">", where(in.begin)});
  }

  check_source(src, m, file, sources, warnings);

  // 3. Function constants: `constant bool has_mask [[function_constant(20)]];` becomes an object
  // that reads the value the pipeline was created with.
  std::vector<std::string> fc_names;
  for (auto& a : attrs) {
    if (first_word(a.text) != "function_constant")
      continue;
    bool in_params = false;
    for (auto& [x, y] : param_spans)
      if (a.begin >= x && a.begin < y)
        in_params = true;
    if (in_params)
      continue;
    unsigned index = 0;
    if (std::sscanf(a.text.c_str() + std::strlen("function_constant"), " ( %u", &index) != 1)
      err(a.begin, "expected [[function_constant(index)]] with an integer index");
    size_t start = a.begin;
    while (start > 0 && m[start - 1] != ';' && m[start - 1] != '}' && m[start - 1] != '{')
      --start;
    start = skip_ws(m, start);
    size_t semi = skip_ws(m, a.end);
    if (semi >= m.size() || m[semi] != ';')
      err(a.begin,
          "a function constant is declared as `constant T name [[function_constant(index)]];` "
          "(no initializer)");
    std::string head = trim(m.substr(start, a.begin - start));
    size_t ns = head.size();
    while (ns > 0 && is_ident_char(head[ns - 1]))
      --ns;
    std::string name = head.substr(ns);
    std::string type;
    std::istringstream words(head.substr(0, ns));
    for (std::string w; words >> w;)
      if (w != "constant" && w != "const" && w != "static")
        type += (type.empty() ? "" : " ") + w;
    if (name.empty() || type.empty())
      err(a.begin, "cannot parse the function constant declaration");
    size_t nl = std::count(src.begin() + start, src.begin() + semi, '\n');
    edits.push_back(
        {start,
         semi + 1,
         "static const ::metalsim::rt::FunctionConstant<" + type + ", " + std::to_string(index) +
             "> " + name + "{\"" + name + "\"};" + std::string(nl, '\n')});
    fc_names.push_back(name);
  }
  // A program-scope constant computed from function constants (`constant bool b = has_mask &&
  // !do_causal;`) is computed when a kernel reads it, from the pipeline's values.
  std::vector<bool> in_namespace; // the open braces: a namespace's (program scope) or not
  size_t last_end = 0;            // where the current statement began
  for (size_t i = 0; i < m.size() && !fc_names.empty(); ++i) {
    if (m[i] == '{') {
      std::string head = m.substr(last_end, i - last_end);
      in_namespace.push_back(has_word(head, "namespace") || has_word(head, "extern"));
      last_end = i + 1;
    } else if (m[i] == '}') {
      if (!in_namespace.empty())
        in_namespace.pop_back();
      last_end = i + 1;
    } else if (m[i] == ';') {
      last_end = i + 1;
    }
    bool program_scope =
        std::all_of(in_namespace.begin(), in_namespace.end(), [](bool n) { return n; });
    if (!program_scope || !word_at(i, "constant") ||
        (i > 0 && !std::isspace((unsigned char)m[i - 1]) && m[i - 1] != ';' && m[i - 1] != '}'))
      continue;
    size_t semi = m.find(';', i), eq = m.find('=', i);
    if (semi == std::string::npos || eq == std::string::npos || eq > semi)
      continue;
    std::string init = m.substr(eq + 1, semi - eq - 1);
    bool derived = false;
    for (auto& n : fc_names)
      derived = derived || has_word(init, n.c_str());
    if (!derived)
      continue;
    std::string head = trim(m.substr(i, eq - i));
    size_t ns = head.size();
    while (ns > 0 && is_ident_char(head[ns - 1]))
      --ns;
    std::string name = head.substr(ns), type;
    std::istringstream words(head.substr(0, ns));
    for (std::string w; words >> w;)
      if (w != "constant" && w != "const" && w != "static" && w != "constexpr")
        type += (type.empty() ? "" : " ") + w;
    if (name.empty() || type.empty() || head.find("::") != std::string::npos)
      continue; // (a static member defined out of its class: refused when the library loads)
    size_t nl = std::count(src.begin() + i, src.begin() + semi, '\n');
    edits.push_back(
        {i,
         semi + 1,
         "static const ::metalsim::rt::DerivedConstant<" + type + "> " + name + "{[] { return " +
             type + "(" + trim(src.substr(eq + 1, semi - eq - 1)) + "); }};" +
             std::string(nl, '\n')});
    i = semi;
    last_end = semi + 1;
  }

  // 4. The `constant` address space is read-only: `constant` becomes `const`, so writing
  // through a `constant` pointer or reference does not compile, and a program-scope
  // `constant uint N = 4;` is a constant that can size an array, as it is in Metal. Where the
  // declaration already says `const` or `constexpr`, the prelude's macro removes the word.
  rewrite_constant_qualifiers(m, {}, out);
  drop_address_space_overloads(m, out);
  // 5. Metal attributes disappear (C++ would reject [[threadgroup(0)]] once `threadgroup` is a
  // macro); standard C++ attributes stay. Blank with spaces: offsets and lines do not move.
  for (auto& a : attrs) {
    if (is_std_attribute(a.text))
      continue;
    bool inside_edit = false;
    for (auto& e : edits)
      if (a.begin >= e.begin && a.begin < e.end)
        inside_edit = true;
    if (!inside_edit)
      for (size_t k2 = a.begin; k2 < a.end; ++k2)
        if (out[k2] != '\n')
          out[k2] = ' ';
  }
  // 6. Apply the edits from the back.
  std::sort(
      edits.begin(), edits.end(), [](const Edit& x, const Edit& y) { return x.begin > y.begin; });
  for (auto& e : edits)
    out.replace(e.begin, e.end - e.begin, e.text);
  // 7. Half literals (1.0h), then swizzles (v.xy).
  rewrite_half_literals(mask_source(out), out);
  rewrite_swizzles(mask_source(out), out);
  return out;
}

std::string builtin_expr(const std::string& b, size_t i) {
  std::string P = "P" + std::to_string(i);
  if (b == "thread_index_in_quadgroup")
    return "::metalsim::rt::quad_builtin<" + P + ">(f, 0)";
  if (b == "quadgroup_index_in_threadgroup")
    return "::metalsim::rt::quad_builtin<" + P + ">(f, 1)";
  if (b == "quadgroups_per_threadgroup")
    return "::metalsim::rt::quad_builtin<" + P + ">(f, 2)";
  return "::metalsim::rt::builtin<" + P + ">(f, ::metalsim::rt::Builtin::" + b + ")";
}

std::string identifier_of(const std::string& s) {
  std::string r;
  for (char c : s)
    r += is_ident_char(c) ? c : '_';
  return r;
}

// The trampoline, the binding checker and the table entry of one kernel of the library.
std::string generate_kernel_glue(const KernelEntry& entry, const Kernel& k) {
  std::ostringstream o;
  std::string ns = "metalsim_k_" + identifier_of(entry.host_name);
  std::string fn = "::" + k.name + entry.targs;
  o << "#line " << entry.loc.line << " " << c_string(entry.loc.file) << "\n";
  o << "namespace " << ns << " {\n";
  o << "using F = decltype(" << fn << ");\n";
  o << "using Tag = ::metalsim::rt::KernelTag<&" << fn << ">;\n";
  for (size_t i = 0; i < k.params.size(); ++i)
    o << "using P" << i << " = ::metalsim::rt::param_t<F, " << i << ">;\n";
  o << "static void thread_fn(::metalsim::rt::Fiber& f) {\n  (void)f;\n  " << fn << "(";
  for (size_t i = 0; i < k.params.size(); ++i) {
    const Param& p = k.params[i];
    if (i)
      o << ", ";
    std::string e;
    if (p.kind == "buffer")
      e = "::metalsim::rt::bind_buffer<P" + std::to_string(i) + ">(f, " + std::to_string(p.index) +
          ")";
    else if (p.kind == "threadgroup")
      e = "::metalsim::rt::bind_threadgroup<P" + std::to_string(i) + ">(f, " +
          std::to_string(p.index) + ")";
    else
      e = builtin_expr(p.builtin, i);
    if (!p.function_constant.empty())
      e = "(" + p.function_constant + " ? " + e + " : ::metalsim::rt::unbound<P" +
          std::to_string(i) + ">())";
    o << e;
  }
  o << ");\n}\n";
  o << "static void check(const ::metalsim::rt::Dispatch& d, ::metalsim::rt::Errors& e) {\n  "
       "::metalsim::rt::guarded_check(d, e, [&] {\n";
  for (size_t i = 0; i < k.params.size(); ++i) {
    const Param& p = k.params[i];
    std::string cond =
        p.function_constant.empty() ? "" : "if (" + p.function_constant + ".value(d.args)) ";
    if (p.kind == "buffer")
      o << "  " << cond << "::metalsim::rt::check_buffer<P" << i << ">(d, e, " << p.index << ", "
        << c_string(p.name) << ", " << c_string(p.type) << ");\n";
    else if (p.kind == "threadgroup")
      o << "  " << cond << "::metalsim::rt::check_threadgroup<P" << i << ">(d, e, " << p.index
        << ", " << c_string(p.name) << ", " << c_string(p.type) << ");\n";
  }
  o << "  });\n}\n";
  o << "static const bool tg_named = (";
  for (size_t t = 0; t < k.tg_decls.size(); ++t)
    o << "::metalsim::rt::tg_name<Tag>(" << t << ", " << c_string(k.tg_decls[t].name) << ", "
      << k.tg_decls[t].line << "), ";
  o << "true);\n";
  o << "static const ::metalsim::rt::KernelInfo info = {" << c_string(entry.host_name) << ", "
    << c_string(k.loc.file) << ", " << k.loc.line
    << ", &thread_fn, &check, ::metalsim::rt::tg_decls_of<Tag>, " << k.tg_decls.size() << ", "
    << k.max_threads << "};\n";
  o << "}  // namespace " << ns << "\n";
  return o.str();
}

} // namespace

Generated generate(
    const std::vector<std::string>& display_names,
    const std::vector<std::string>& sources,
    const std::vector<std::string>& include_dirs) {
  Generated g;
  std::set<std::string> names;
  size_t nfiles = sources.size();
  for (size_t fi = 0; fi < nfiles; ++fi) {
    const std::string& file = display_names[fi];
    std::vector<Kernel> kernels;
    std::vector<KernelEntry> entries;
    std::string body;
    try {
      std::set<std::string> once;
      body = rewrite_file(
          inline_includes(sources[fi], file, include_dirs, once, 0),
          file,
          kernels,
          entries,
          g.warnings);
    } catch (const SourceError& e) {
      throw CompileError(e.loc.file + ":" + std::to_string(e.loc.line) + ": error: " + e.msg);
    }
    for (auto& en : entries) {
      if (!names.insert(en.host_name).second)
        throw CompileError(
            en.loc.file + ":" + std::to_string(en.loc.line) + ": error: a kernel named '" +
            en.host_name + "' is defined twice in this library");
      g.kernel_names.push_back(en.host_name);
    }
    std::ostringstream tu;
    tu << "// Generated by metalsim from " << file << ". Do not edit.\n";
    if (sources[fi].find("#pragma metalsim allow_cxx") != std::string::npos)
      tu << "#define METALSIM_ALLOW_CXX 1\n";
    tu << "#include \"metalsim_kernel_prelude.h\"\n";
    tu << "#line 1 " << c_string(file) << "\n";
    tu << body << "\n";
    for (auto& en : entries)
      tu << generate_kernel_glue(en, kernels[en.kernel]);
    tu << "const ::metalsim::rt::KernelInfo* const* metalsim_file_kernels_" << fi
       << "(size_t* n) {\n";
    tu << "  static const ::metalsim::rt::KernelInfo* const table[] = {";
    for (auto& en : entries)
      tu << "&metalsim_k_" << identifier_of(en.host_name) << "::info, ";
    tu << "nullptr};\n  *n = " << entries.size() << ";\n  return table;\n}\n";
    if (fi + 1 == nfiles) {
      // The library's entry points (in the last translation unit).
      for (size_t j = 0; j + 1 < nfiles; ++j)
        tu << "const ::metalsim::rt::KernelInfo* const* metalsim_file_kernels_" << j
           << "(size_t* n);\n";
      tu << "METALSIM_DEFINE_CONTEXT_SWITCH\n";
      tu << "static const ::metalsim::rt::FileKernels metalsim_files[] = {";
      for (size_t j = 0; j < nfiles; ++j)
        tu << "metalsim_file_kernels_" << j << ", ";
      tu << "};\n";
      const char* exported = "extern \"C\" __attribute__((visibility(\"default\")))";
      tu << exported
         << " int metalsim_dispatch(const metalsim_dispatch_args* a, char* err, size_t len) {\n"
         << "  return ::metalsim::rt::library_dispatch(metalsim_files, " << nfiles
         << ", a, err, len);\n}\n";
      tu << exported << " const char* metalsim_kernel_names() {\n"
         << "  return ::metalsim::rt::library_kernel_names(metalsim_files, " << nfiles << ");\n}\n";
      tu << exported << " const char* metalsim_function_constants() {\n"
         << "  return ::metalsim::rt::library_function_constants();\n}\n";
      tu << exported << " int metalsim_abi_version() { return METALSIM_ABI_VERSION; }\n";
    }
    g.tus.push_back(tu.str());
  }
  return g;
}

} // namespace detail
} // namespace metalsim
