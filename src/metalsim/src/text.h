// Text helpers shared by the translate and check stages (text.cpp).
#pragma once
#include <string>
#include <utility>
#include <vector>

namespace metalsim {
namespace detail {

bool is_ident_char(char c);
// Comments, string/char literals and preprocessor lines become spaces (newlines kept), so the
// parsers only see code; offsets stay those of the original text.
std::string mask_source(const std::string& s);
size_t skip_ws(const std::string& m, size_t i);
// Index of the bracket matching the one at `open` (same kind), or npos.
size_t match_bracket(const std::string& m, size_t open);
std::string trim(const std::string& s);
std::string collapse_ws(const std::string& s);
// s as a C string literal.
std::string c_string(const std::string& s);
// Split at top-level commas (outside (), [], {}, <>).
std::vector<std::pair<size_t, size_t>> split_commas(const std::string& m, size_t a, size_t b);
// s with the characters inside (), [] and {} replaced by spaces (the brackets stay).
std::string blank_nested(const std::string& s);
// The declarators of a declaration whose nested brackets are blanked (see blank_nested): split
// at the commas outside template arguments (`vec<float, 4> a[N], b[M]` has two).
std::vector<std::pair<size_t, size_t>> split_declarators(const std::string& top);
// Whether s contains the identifier w as a whole word.
bool has_word(const std::string& s, const char* w);

// The file and line of a position of the generated text: the last `#line N "file"` directive
// before it (included headers are inlined behind one), else line 1 of `file`.
struct Location {
  std::string file;
  unsigned line;
};
Location locate(const std::string& t, size_t pos, const std::string& file);

// An error in a kernel source, reported as a CompileError at its .metal line.
struct SourceError {
  Location loc;
  std::string msg;
};

} // namespace detail
} // namespace metalsim
