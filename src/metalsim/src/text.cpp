// Text helpers of the translate and check stages: the .metal source read as C++ tokens, with
// comments, strings and preprocessor lines masked out.
#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstring>

#include "text.h"

namespace metalsim {
namespace detail {

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

bool has_word(const std::string& s, const char* w) {
  size_t n = std::strlen(w);
  for (size_t p = s.find(w); p != std::string::npos; p = s.find(w, p + 1))
    if ((p == 0 || !is_ident_char(s[p - 1])) && (p + n >= s.size() || !is_ident_char(s[p + n])))
      return true;
  return false;
}

Location locate(const std::string& t, size_t pos, const std::string& file) {
  Location loc{file, 1};
  size_t i = 0;
  while (i < t.size()) {
    size_t e = t.find('\n', i);
    if (e == std::string::npos)
      e = t.size();
    if (pos <= e)
      return loc;
    unsigned n = 0;
    if (t.compare(i, 6, "#line ") == 0 && std::sscanf(t.c_str() + i + 6, "%u", &n) == 1) {
      size_t q1 = t.find('"', i), q2 = q1 == std::string::npos ? q1 : t.find('"', q1 + 1);
      if (q2 != std::string::npos && q2 < e)
        loc.file = t.substr(q1 + 1, q2 - q1 - 1);
      loc.line = n;
    } else {
      ++loc.line;
    }
    i = e + 1;
  }
  return loc;
}

} // namespace detail
} // namespace metalsim
