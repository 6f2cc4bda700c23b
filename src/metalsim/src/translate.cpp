// Stage 1, translate: a .metal file becomes a C++ translation unit for the simulator's runtime.
// Line numbers of the output equal the input's (#line), so compiler errors point at .metal lines.
#include <algorithm>
#include <cctype>
#include <cstring>
#include <set>
#include <sstream>

#include "internal.h"

namespace metalsim {
namespace detail {

const char* const kGeneratorVersion = "metalsim-gen-5";

namespace {

struct SourceError {
  unsigned line;
  std::string msg;
};

bool is_ident_char(char c) {
  return std::isalnum((unsigned char)c) || c == '_';
}

// Comments, string/char literals and preprocessor lines become spaces (newlines kept), so the
// parser below only sees code; offsets stay those of the original text.
std::string mask_source(const std::string& s) {
  std::string m = s;
  size_t n = s.size(), i = 0;
  bool line_start = true;
  auto blank = [&](size_t a, size_t b) {
    for (size_t k = a; k < b && k < n; ++k)
      if (m[k] != '\n')
        m[k] = ' ';
  };
  while (i < n) {
    char c = s[i];
    if (line_start) {
      size_t j = i;
      while (j < n && (s[j] == ' ' || s[j] == '\t'))
        ++j;
      if (j < n && s[j] == '#') {
        size_t e = j;
        while (e < n && s[e] != '\n') {
          if (s[e] == '\\' && e + 1 < n && s[e + 1] == '\n')
            ++e;
          ++e;
        }
        blank(j, e);
        i = e;
        continue;
      }
      line_start = false;
    }
    if (c == '\n') {
      line_start = true;
      ++i;
    } else if (c == '/' && i + 1 < n && s[i + 1] == '/') {
      size_t e = s.find('\n', i);
      if (e == std::string::npos)
        e = n;
      blank(i, e);
      i = e;
    } else if (c == '/' && i + 1 < n && s[i + 1] == '*') {
      size_t e = s.find("*/", i + 2);
      e = (e == std::string::npos) ? n : e + 2;
      blank(i, e);
      i = e;
    } else if (c == '"' || c == '\'') {
      size_t e = i + 1;
      while (e < n && s[e] != c && s[e] != '\n')
        e += (s[e] == '\\') ? 2 : 1;
      blank(i + 1, e);
      i = e + 1;
    } else {
      ++i;
    }
  }
  return m;
}

unsigned line_of(const std::string& s, size_t pos) {
  return 1 + unsigned(std::count(s.begin(), s.begin() + std::min(pos, s.size()), '\n'));
}

size_t skip_ws(const std::string& m, size_t i) {
  while (i < m.size() && std::isspace((unsigned char)m[i]))
    ++i;
  return i;
}

// Index of the bracket matching the one at `open` (same kind), or npos.
size_t match_bracket(const std::string& m, size_t open) {
  char o = m[open];
  char c = o == '(' ? ')' : o == '[' ? ']' : o == '{' ? '}' : '>';
  int depth = 0;
  for (size_t i = open; i < m.size(); ++i) {
    if (m[i] == o)
      ++depth;
    else if (m[i] == c && --depth == 0)
      return i;
  }
  return std::string::npos;
}

std::string trim(const std::string& s) {
  size_t a = 0, b = s.size();
  while (a < b && std::isspace((unsigned char)s[a]))
    ++a;
  while (b > a && std::isspace((unsigned char)s[b - 1]))
    --b;
  return s.substr(a, b - a);
}

std::string collapse_ws(const std::string& s) {
  std::string r;
  bool sp = false;
  for (char c : s) {
    if (std::isspace((unsigned char)c)) {
      sp = true;
    } else {
      if (sp && !r.empty())
        r += ' ';
      sp = false;
      r += c;
    }
  }
  return r;
}

std::string c_string(const std::string& s) {
  std::string r = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\')
      r += '\\';
    if (c == '\n') {
      r += "\\n";
      continue;
    }
    r += c;
  }
  return r + "\"";
}

// Split at top-level commas (outside (), [], {}, <>).
std::vector<std::pair<size_t, size_t>> split_commas(const std::string& m, size_t a, size_t b) {
  std::vector<std::pair<size_t, size_t>> parts;
  int depth = 0;
  size_t start = a;
  for (size_t i = a; i < b; ++i) {
    char c = m[i];
    if (c == '(' || c == '[' || c == '{' || c == '<')
      ++depth;
    else if (c == ')' || c == ']' || c == '}' || c == '>')
      --depth;
    else if (c == ',' && depth == 0) {
      parts.push_back({start, i});
      start = i + 1;
    }
  }
  parts.push_back({start, b});
  return parts;
}

// s with the characters inside (), [] and {} replaced by spaces (the brackets stay).
std::string blank_nested(const std::string& s) {
  std::string r = s;
  int depth = 0;
  for (size_t i = 0; i < s.size(); ++i) {
    char c = s[i];
    if (c == ')' || c == ']' || c == '}')
      --depth;
    if (depth > 0 && c != '\n')
      r[i] = ' ';
    if (c == '(' || c == '[' || c == '{')
      ++depth;
  }
  return r;
}

// The declarators of a declaration whose nested brackets are blanked (see blank_nested): split at
// the commas outside template arguments (`vec<float, 4> a[N], b[M]` has two).
std::vector<std::pair<size_t, size_t>> split_declarators(const std::string& top) {
  std::vector<std::pair<size_t, size_t>> parts;
  int angle = 0;
  size_t start = 0;
  for (size_t i = 0; i < top.size(); ++i) {
    if (top[i] == '<')
      ++angle;
    else if (top[i] == '>' && angle > 0)
      --angle;
    else if (top[i] == ',' && angle == 0) {
      parts.push_back({start, i});
      start = i + 1;
    }
  }
  parts.push_back({start, top.size()});
  return parts;
}

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

bool is_std_attribute(const std::string& text) {
  std::string first;
  for (char c : text) {
    if (!is_ident_char(c))
      break;
    first += c;
  }
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
  unsigned line = 0;
};

struct TgDeclGen {
  std::string name, type, dims;
  unsigned line;
};

struct Kernel {
  std::string name;
  unsigned line;
  std::vector<Param> params;
  std::vector<TgDeclGen> tg_decls;
  unsigned max_threads = 0;
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

// Rewrites one .metal file and collects its kernels. Line numbers of the output equal the input's.
std::string
rewrite_file(const std::string& src, const std::string& file, std::vector<Kernel>& kernels) {
  const std::string m = mask_source(src);
  std::string out = src; // edits are applied with the same offsets (replacements keep length
                         // where possible; threadgroup declarations are rebuilt below)
  auto err = [&](size_t pos, const std::string& msg) { throw SourceError{line_of(src, pos), msg}; };

  // 1. Find kernels.
  std::vector<Attr> attrs = find_attributes(m);
  struct Edit {
    size_t begin, end;
    std::string text;
  };
  std::vector<Edit> edits;
  std::vector<std::pair<size_t, size_t>> kernel_spans; // body spans
  std::vector<std::pair<size_t, size_t>> param_spans;  // kernel parameter lists

  auto next_kernel = [&](size_t from, size_t& kw_begin, size_t& after) -> bool {
    // `kernel` keyword or [[kernel]] / [[kernel, ...]] attribute.
    for (size_t i = from; i < m.size(); ++i) {
      if (m.compare(i, 6, "kernel") == 0 && (i == 0 || !is_ident_char(m[i - 1])) &&
          (i + 6 >= m.size() || !is_ident_char(m[i + 6]))) {
        // inside [[ ]]?
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
    // more attributes
    while (i + 1 < m.size() && m[i] == '[' && m[i + 1] == '[') {
      size_t e = m.find("]]", i);
      i = skip_ws(m, e + 2);
    }
    if (m.compare(i, 4, "void") != 0 || is_ident_char(m[i + 4])) {
      pos = ka;
      if (m.compare(kb, 2, "[[") == 0 || m.compare(i, 8, "template") == 0)
        err(kb, "a kernel must return void (templated kernels are not supported by metalsim)");
      continue;
    }
    i = skip_ws(m, i + 4);
    size_t nb = i;
    while (i < m.size() && is_ident_char(m[i]))
      ++i;
    Kernel k;
    k.name = m.substr(nb, i - nb);
    k.line = line_of(src, nb);
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
      Param p;
      p.line = line_of(
          src,
          a + (ptext.size() - trim(ptext).size() > 0 ? ptext.find_first_not_of(" \t\n\r") : 0));
      // attributes of this parameter
      std::vector<std::string> pattrs;
      std::string stripped;
      for (size_t q = 0; q < ptext.size();) {
        if (ptext.compare(q, 2, "[[") == 0) {
          size_t e = ptext.find("]]", q);
          pattrs.push_back(trim(ptext.substr(q + 2, e - q - 2)));
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
        err(a,
            "kernel '" + k.name + "': cannot parse the parameter '" + collapse_ws(trim(ptext)) +
                "'");
      if (pattrs.empty())
        err(a,
            "kernel '" + k.name + "': parameter '" + p.name +
                "' needs an attribute: [[buffer(n)]], [[threadgroup(n)]] or a builtin such as "
                "[[thread_position_in_grid]]");
      for (const std::string& at : pattrs) {
        std::string at2 = collapse_ws(at);
        unsigned idx = 0;
        char tail = 0;
        if (std::sscanf(at2.c_str(), "buffer ( %u %c", &idx, &tail) == 2 ||
            std::sscanf(at2.c_str(), "buffer(%u%c", &idx, &tail) == 2) {
          if (idx > 30)
            err(a,
                "kernel '" + k.name + "': [[buffer(" + std::to_string(idx) +
                    ")]] is out of range (0..30)");
          if (!seen_buffers.insert(idx).second)
            err(a,
                "kernel '" + k.name + "': two parameters use [[buffer(" + std::to_string(idx) +
                    ")]]");
          p.kind = "buffer";
          p.index = idx;
        } else if (
            std::sscanf(at2.c_str(), "threadgroup ( %u %c", &idx, &tail) == 2 ||
            std::sscanf(at2.c_str(), "threadgroup(%u%c", &idx, &tail) == 2) {
          if (idx > 30)
            err(a,
                "kernel '" + k.name + "': [[threadgroup(" + std::to_string(idx) +
                    ")]] is out of range (0..30)");
          if (!seen_tg.insert(idx).second)
            err(a,
                "kernel '" + k.name + "': two parameters use [[threadgroup(" + std::to_string(idx) +
                    ")]]");
          if (p.type.find('*') == std::string::npos)
            err(a,
                "kernel '" + k.name + "': [[threadgroup(" + std::to_string(idx) +
                    ")]] parameter '" + p.name + "' must be a pointer");
          p.kind = "threadgroup";
          p.index = idx;
        } else {
          bool found = false;
          for (const char* bname : kBuiltins)
            if (at2 == bname)
              found = true;
          if (!found)
            err(a,
                "kernel '" + k.name + "': parameter '" + p.name + "' has the attribute [[" + at2 +
                    "]], which metalsim does not support (buffers, threadgroup memory and the "
                    "compute builtins only)");
          p.kind = "builtin";
          p.builtin = at2;
        }
      }
      k.params.push_back(p);
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
    // Threadgroup declarations in the body.
    for (size_t q = j + 1; q < body_end; ++q) {
      if (m.compare(q, 11, "threadgroup") != 0 || is_ident_char(m[q - 1]) ||
          is_ident_char(m[q + 11]))
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
        k.tg_decls.push_back({name, type, dims, line_of(src, q)});
        if (dims.empty())
          repl += type + "& " + name + " = *::metalsim::rt::tg_decl<" + type + ">(" +
                  std::to_string(idx) + ");";
        else
          repl += type + " (&" + name + ")" + dims + " = *::metalsim::rt::tg_decl<" + type + dims +
                  ">(" + std::to_string(idx) + ");";
      }
      repl += std::string(nl, '\n');
      edits.push_back({q, semi + 1, repl});
      q = semi;
    }
    kernel_spans.push_back({kb, body_end});
    kernels.push_back(k);
    pos = body_end + 1;
  }

  // 2. The `constant` address space is read-only: outside the kernels' parameter lists (whose
  // buffers are bound as they are), `constant` becomes `const`, so a program-scope
  // `constant uint N = 4;` is a constant that can size an array, as it is in Metal. Where the
  // declaration already says `const` or `constexpr`, the prelude's macro removes the word.
  rewrite_constant_qualifiers(m, param_spans, out);
  // 3. Metal attributes disappear (C++ would reject [[threadgroup(0)]] once `threadgroup` is a
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
  // 4. Apply the threadgroup edits from the back.
  std::sort(
      edits.begin(), edits.end(), [](const Edit& x, const Edit& y) { return x.begin > y.begin; });
  for (auto& e : edits)
    out.replace(e.begin, e.end - e.begin, e.text);
  // 5. Half literals (1.0h).
  rewrite_half_literals(mask_source(out), out);
  (void)file;
  return out;
}

std::string builtin_enum(const std::string& b) {
  return "::metalsim::rt::Builtin::" + b;
}

// The trampoline, the binding checker and the table entry of one kernel.
std::string generate_kernel_glue(const Kernel& k, const std::string& file) {
  std::ostringstream o;
  std::string ns = "metalsim_k_" + k.name;
  o << "#line " << k.line << " " << c_string(file) << "\n";
  o << "namespace " << ns << " {\n";
  for (size_t i = 0; i < k.params.size(); ++i)
    o << "using P" << i << " = " << k.params[i].type << ";\n";
  o << "static void thread_fn(::metalsim::rt::Fiber& f) {\n  (void)f;\n  ::" << k.name << "(";
  for (size_t i = 0; i < k.params.size(); ++i) {
    const Param& p = k.params[i];
    if (i)
      o << ", ";
    if (p.kind == "buffer")
      o << "::metalsim::rt::bind_buffer<P" << i << ">(f, " << p.index << ")";
    else if (p.kind == "threadgroup")
      o << "::metalsim::rt::bind_threadgroup<P" << i << ">(f, " << p.index << ")";
    else
      o << "::metalsim::rt::builtin<P" << i << ">(f, " << builtin_enum(p.builtin) << ")";
  }
  o << ");\n}\n";
  o << "static void check(const ::metalsim::rt::Dispatch& d, ::metalsim::rt::Errors& e) {\n  "
       "(void)d; (void)e;\n";
  for (size_t i = 0; i < k.params.size(); ++i) {
    const Param& p = k.params[i];
    if (p.kind == "buffer")
      o << "  ::metalsim::rt::check_buffer<P" << i << ">(d, e, " << p.index << ", "
        << c_string(p.name) << ", " << c_string(p.type) << ");\n";
    else if (p.kind == "threadgroup")
      o << "  ::metalsim::rt::check_threadgroup<P" << i << ">(d, e, " << p.index << ", "
        << c_string(p.name) << ", " << c_string(p.type) << ");\n";
  }
  o << "}\n";
  o << "static const ::metalsim::rt::TgDecl tg_decls[] = {\n";
  for (auto& t : k.tg_decls) // #line: an unknown size constant is reported at the declaration
    o << "#line " << t.line << " " << c_string(file) << "\n  {" << c_string(t.name) << ", sizeof("
      << t.type << t.dims << "), alignof(" << t.type << t.dims << "), " << t.line << "},\n";
  o << "#line " << k.line << " " << c_string(file) << "\n  {nullptr, 0, 0, 0}};\n";
  o << "static const ::metalsim::rt::KernelInfo info = {" << c_string(k.name) << ", "
    << c_string(file) << ", " << k.line << ", &thread_fn, &check, tg_decls, " << k.tg_decls.size()
    << ", " << k.max_threads << "};\n";
  o << "}  // namespace " << ns << "\n";
  return o.str();
}

} // namespace

Generated
generate(const std::vector<std::string>& display_names, const std::vector<std::string>& sources) {
  Generated g;
  std::set<std::string> names;
  size_t nfiles = sources.size();
  for (size_t fi = 0; fi < nfiles; ++fi) {
    const std::string& file = display_names[fi];
    std::vector<Kernel> kernels;
    std::string body;
    try {
      body = rewrite_file(sources[fi], file, kernels);
    } catch (const SourceError& e) {
      throw CompileError(file + ":" + std::to_string(e.line) + ": error: " + e.msg);
    }
    for (auto& k : kernels) {
      if (!names.insert(k.name).second)
        throw CompileError(
            file + ":" + std::to_string(k.line) + ": error: a kernel named '" + k.name +
            "' is defined twice in this library");
      g.kernel_names.push_back(k.name);
    }
    std::ostringstream tu;
    tu << "// Generated by metalsim from " << file << ". Do not edit.\n";
    tu << "#include \"metalsim_kernel_prelude.h\"\n";
    tu << "#line 1 " << c_string(file) << "\n";
    tu << body << "\n";
    for (auto& k : kernels)
      tu << generate_kernel_glue(k, file);
    tu << "const ::metalsim::rt::KernelInfo* const* metalsim_file_kernels_" << fi
       << "(size_t* n) {\n";
    tu << "  static const ::metalsim::rt::KernelInfo* const table[] = {";
    for (auto& k : kernels)
      tu << "&metalsim_k_" << k.name << "::info, ";
    tu << "nullptr};\n  *n = " << kernels.size() << ";\n  return table;\n}\n";
    if (fi + 1 == nfiles) {
      // The library's entry points (in the last translation unit).
      for (size_t j = 0; j + 1 < nfiles; ++j)
        tu << "const ::metalsim::rt::KernelInfo* const* metalsim_file_kernels_" << j
           << "(size_t* n);\n";
      tu << "METALSIM_DEFINE_CONTEXT_SWITCH\n";
      tu << "static std::vector<const ::metalsim::rt::KernelInfo*>& metalsim_all_kernels() {\n"
            "  static std::vector<const ::metalsim::rt::KernelInfo*> all = [] {\n"
            "    std::vector<const ::metalsim::rt::KernelInfo*> v;\n"
            "    size_t n;\n";
      for (size_t j = 0; j < nfiles; ++j)
        tu << "    { auto t = metalsim_file_kernels_" << j
           << "(&n); v.insert(v.end(), t, t + n); }\n";
      tu << "    return v;\n  }();\n  return all;\n}\n";
      tu << "extern \"C\" __attribute__((visibility(\"default\"))) int metalsim_dispatch("
            "const metalsim_dispatch_args* a, char* err, size_t errlen) {\n"
            "  auto& ks = metalsim_all_kernels();\n"
            "  return ::metalsim::rt::run_dispatch(ks.data(), ks.size(), a, err, errlen);\n}\n";
      tu << "extern \"C\" __attribute__((visibility(\"default\"))) const char* "
            "metalsim_kernel_names() {\n"
            "  static std::string s = [] { std::string r; for (auto k : metalsim_all_kernels()) { "
            "r += k->name; r += '\\n'; } return r; }();\n"
            "  return s.c_str();\n}\n";
      tu << "extern \"C\" __attribute__((visibility(\"default\"))) int metalsim_abi_version() { "
            "return METALSIM_ABI_VERSION; }\n";
    }
    g.tus.push_back(tu.str());
  }
  return g;
}

} // namespace detail
} // namespace metalsim
