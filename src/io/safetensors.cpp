/// \file io/safetensors.cpp
/// safetensors reader (mmap + full validation) and atomic writer.

#include "hqq/io/safetensors.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <random>
#include <system_error>
#include <unordered_set>
#include <utility>

#include "hqq/error.hpp"

namespace hqq::io {
namespace {

using Json = nlohmann::ordered_json;  // keeps header order for ties and for writing

constexpr std::uint64_t kMaxHeaderSize = 100'000'000;  // same limit as the Rust reader
constexpr std::size_t kLengthPrefix = 8;
// serde_json's default recursion limit; a real header nests 3 deep.
constexpr int kMaxJsonDepth = 128;

/// Thread-safe strerror.
std::string errno_text(int err) { return std::error_code(err, std::generic_category()).message(); }

/// Quotes a name for a one-line message: control bytes escaped, long names cut.
std::string quote(std::string_view s) {
  constexpr std::size_t kMaxShown = 200;
  std::string out = "'";
  const std::size_t n = std::min(s.size(), kMaxShown);
  for (std::size_t i = 0; i < n; ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x20 || c == 0x7f || c == '\'' || c == '\\') {
      out += fmt::format("\\x{:02x}", c);
    } else {
      out += static_cast<char>(c);
    }
  }
  if (n < s.size()) out += "...";
  out += "'";
  return out;
}

/// Offset of the first byte that breaks UTF-8 (RFC 3629: no overlongs, no
/// surrogates, <= U+10FFFF), or npos when the whole range is valid.
std::size_t invalid_utf8_at(const std::uint8_t* p, std::size_t n) {
  std::size_t i = 0;
  while (i < n) {
    const std::uint8_t c = p[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    std::size_t len;
    std::uint8_t lo = 0x80, hi = 0xbf;  // allowed range of the second byte
    if (c >= 0xc2 && c <= 0xdf) {
      len = 2;
    } else if (c >= 0xe0 && c <= 0xef) {
      len = 3;
      if (c == 0xe0) lo = 0xa0;
      if (c == 0xed) hi = 0x9f;
    } else if (c >= 0xf0 && c <= 0xf4) {
      len = 4;
      if (c == 0xf0) lo = 0x90;
      if (c == 0xf4) hi = 0x8f;
    } else {
      return i;
    }
    if (n - i < len) return i;
    if (p[i + 1] < lo || p[i + 1] > hi) return i;
    for (std::size_t k = 2; k < len; ++k) {
      if (p[i + k] < 0x80 || p[i + k] > 0xbf) return i;
    }
    i += len;
  }
  return std::string_view::npos;
}

bool is_utf8(std::string_view s) {
  return invalid_utf8_at(reinterpret_cast<const std::uint8_t*>(s.data()), s.size()) ==
         std::string_view::npos;
}

/// A JSON number that is a non-negative integer, as u64; false otherwise.
bool json_to_u64(const Json& v, std::uint64_t& out) {
  if (v.is_number_unsigned()) {
    out = v.get<std::uint64_t>();
    return true;
  }
  // "-0" parses as a signed zero; serde accepts it for usize, so do we.
  if (v.is_number_integer() && v.get<std::int64_t>() >= 0) {
    out = static_cast<std::uint64_t>(v.get<std::int64_t>());
    return true;
  }
  return false;
}

/// Element count of a shape with the same left-to-right overflow rule as
/// hqq::shape_numel, so TensorInfo::numel() never throws on a validated shape.
bool checked_numel(const std::vector<std::int64_t>& shape, std::int64_t& out) {
  std::int64_t n = 1;
  for (auto d : shape) {
    if (d < 0) return false;
    if (d != 0 && n > std::numeric_limits<std::int64_t>::max() / d) return false;
    n *= d;
  }
  out = n;
  return true;
}

/// Bytes of numel elements of dtype, false on u64 overflow.
bool checked_nbytes(std::int64_t numel, DType dtype, std::uint64_t& out) {
  const auto n = static_cast<std::uint64_t>(numel);
  const std::uint64_t sz = dtype_size(dtype);
  if (sz != 0 && n > std::numeric_limits<std::uint64_t>::max() / sz) return false;
  out = n * sz;
  return true;
}

/// Parses the header text into JSON. Rejects duplicate keys in any object
/// (nlohmann would silently keep the last one, hiding a second tensor) and
/// nesting deeper than kMaxJsonDepth.
Json parse_header_json(const std::string& path, const char* begin, const char* end) {
  std::vector<std::unordered_set<std::string>> keys;  // one set per open object
  std::string top_key;  // last key of the top-level object, to name the entry
  int depth = 0;
  Json::parser_callback_t cb = [&](int, Json::parse_event_t ev, Json& parsed) -> bool {
    switch (ev) {
      case Json::parse_event_t::object_start:
      case Json::parse_event_t::array_start:
        HQQ_EXPECTS(++depth <= kMaxJsonDepth, "{}: header JSON nests deeper than {} levels", path,
                    kMaxJsonDepth);
        if (ev == Json::parse_event_t::object_start) keys.emplace_back();
        break;
      case Json::parse_event_t::object_end:
        keys.pop_back();
        --depth;
        break;
      case Json::parse_event_t::array_end:
        --depth;
        break;
      case Json::parse_event_t::key: {
        const auto& k = parsed.get_ref<const std::string&>();
        const bool fresh = keys.back().insert(k).second;
        if (keys.size() == 1) {
          HQQ_EXPECTS(fresh, "{}: duplicate tensor name {} in header", path, quote(k));
          top_key = k;
        } else {
          HQQ_EXPECTS(fresh, "{}: duplicate key {} in header entry {}", path, quote(k),
                      quote(top_key));
        }
        break;
      }
      case Json::parse_event_t::value:
        break;
    }
    return true;
  };
  try {
    return Json::parse(begin, end, cb);
  } catch (const Json::exception& e) {
    // Drop nlohmann's "[json.exception.parse_error.101] " prefix.
    std::string what = e.what();
    const auto close = what.find("] ");
    if (what.rfind("[json.exception.", 0) == 0 && close != std::string::npos) {
      what.erase(0, close + 2);
    }
    detail::throw_error("{}: header is not valid JSON: {}", path, what);
  }
}

}  // namespace

// ---------------------------------------------------------------- reader

struct SafetensorsFile::Impl {
  std::string path;
  std::vector<std::uint8_t> owned;  ///< the image, for from_bytes()
  void* map = nullptr;              ///< the mapping, for open()
  std::size_t map_len = 0;
  const std::uint8_t* base = nullptr;
  std::size_t size = 0;
  std::uint64_t data_start = 0;  ///< 8 + header length
  std::uint64_t data_size = 0;
  std::vector<TensorInfo> tensors;
  std::map<std::string, std::size_t, std::less<>> index;
  std::map<std::string, std::string> metadata;

  Impl() = default;
  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;
  ~Impl() {
    if (map != nullptr) ::munmap(map, map_len);
  }

  void validate();
  void read_metadata(const Json& v);
  TensorInfo read_entry(const std::string& name, const Json& v) const;
};

void SafetensorsFile::Impl::validate() {
  HQQ_EXPECTS(size >= kLengthPrefix, "{}: file is {} bytes, too short for the 8-byte header length",
              path, size);
  std::uint64_t n = 0;
  for (std::size_t i = 0; i < kLengthPrefix; ++i) n |= std::uint64_t{base[i]} << (8 * i);
  HQQ_EXPECTS(n <= kMaxHeaderSize, "{}: header length {} exceeds the limit of {} bytes", path, n,
              kMaxHeaderSize);
  HQQ_EXPECTS(n <= size - kLengthPrefix,
              "{}: header length {} runs past the end of the file ({} bytes)", path, n, size);
  data_start = kLengthPrefix + n;
  data_size = size - data_start;

  const auto* hdr = base + kLengthPrefix;
  const std::size_t bad = invalid_utf8_at(hdr, n);
  HQQ_EXPECTS(bad == std::string_view::npos,
              "{}: header is not valid UTF-8 (bad byte 0x{:02x} at header offset {})", path,
              bad == std::string_view::npos ? 0 : hdr[bad], bad);
  // The Rust reader requires '{' first; trailing whitespace is the padding.
  HQQ_EXPECTS(n > 0 && hdr[0] == '{', "{}: header does not start with '{{'", path);

  const char* text = reinterpret_cast<const char*>(hdr);
  // nlohmann's lexer takes a NUL byte for the end of input, which would let
  // "{}\0garbage" through; valid JSON text never holds a raw NUL.
  const void* nul = std::memchr(text, '\0', n);
  HQQ_EXPECTS(nul == nullptr, "{}: header has a NUL byte at offset {}", path,
              nul == nullptr ? 0 : static_cast<const char*>(nul) - text);
  const Json j = parse_header_json(path, text, text + n);
  HQQ_EXPECTS(j.is_object(), "{}: header is not a JSON object", path);

  std::vector<TensorInfo> infos;
  infos.reserve(j.size());
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (it.key() == "__metadata__") {
      read_metadata(it.value());
    } else {
      infos.push_back(read_entry(it.key(), it.value()));
    }
  }

  // Offset order; ties (zero-size tensors) keep header order.
  std::stable_sort(infos.begin(), infos.end(), [](const TensorInfo& a, const TensorInfo& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  std::uint64_t covered = 0;
  for (std::size_t i = 0; i < infos.size(); ++i) {
    const auto& t = infos[i];
    HQQ_EXPECTS(t.begin <= covered,
                "{}: bytes [{}, {}) of the data section are not covered by any tensor (gap "
                "before tensor {})",
                path, covered, t.begin, quote(t.name));
    if (t.begin < covered) {
      const auto& prev = infos[i - 1];  // covered > 0 implies i > 0
      detail::throw_error("{}: tensor {} data_offsets [{}, {}] overlap tensor {} [{}, {}]", path,
                          quote(t.name), t.begin, t.end, quote(prev.name), prev.begin, prev.end);
    }
    covered = t.end;
  }
  HQQ_EXPECTS(covered == data_size,
              "{}: data section is {} bytes but the tensors cover only {} (not fully covered)",
              path, data_size, covered);

  tensors = std::move(infos);
  for (std::size_t i = 0; i < tensors.size(); ++i) index.emplace(tensors[i].name, i);
}

void SafetensorsFile::Impl::read_metadata(const Json& v) {
  // serde reads a null Option as None: accept it as "no metadata".
  if (v.is_null()) return;
  HQQ_EXPECTS(v.is_object(), "{}: \"__metadata__\" is not a JSON object", path);
  for (auto it = v.begin(); it != v.end(); ++it) {
    HQQ_EXPECTS(it.value().is_string(), "{}: \"__metadata__\" value of {} is not a string", path,
                quote(it.key()));
    metadata[it.key()] = it.value().get<std::string>();
  }
}

TensorInfo SafetensorsFile::Impl::read_entry(const std::string& name, const Json& v) const {
  const auto q = quote(name);
  HQQ_EXPECTS(v.is_object(), "{}: tensor {} is not a JSON object", path, q);
  TensorInfo t;
  t.name = name;

  const auto dt = v.find("dtype");
  HQQ_EXPECTS(dt != v.end(), "{}: tensor {} has no \"dtype\"", path, q);
  HQQ_EXPECTS(dt->is_string(), "{}: tensor {} \"dtype\" is not a string", path, q);
  const auto& dname = dt->get_ref<const std::string&>();
  HQQ_EXPECTS(parse_dtype(dname, t.dtype), "{}: tensor {} has unknown dtype {}", path, q,
              quote(dname));

  const auto sh = v.find("shape");
  HQQ_EXPECTS(sh != v.end(), "{}: tensor {} has no \"shape\"", path, q);
  HQQ_EXPECTS(sh->is_array(), "{}: tensor {} \"shape\" is not an array", path, q);
  for (const auto& d : *sh) {
    std::uint64_t u = 0;
    HQQ_EXPECTS(json_to_u64(d, u), "{}: tensor {} shape has {} (not a non-negative integer)", path,
                q, d.dump(-1, ' ', false, Json::error_handler_t::replace));
    HQQ_EXPECTS(u <= static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()),
                "{}: tensor {} shape dimension {} does not fit in int64", path, q, u);
    t.shape.push_back(static_cast<std::int64_t>(u));
  }

  const auto off = v.find("data_offsets");
  HQQ_EXPECTS(off != v.end(), "{}: tensor {} has no \"data_offsets\"", path, q);
  HQQ_EXPECTS(off->is_array() && off->size() == 2 && json_to_u64((*off)[0], t.begin) &&
                  json_to_u64((*off)[1], t.end),
              "{}: tensor {} \"data_offsets\" is not [begin, end] with non-negative integers", path,
              q);
  HQQ_EXPECTS(t.begin <= t.end, "{}: tensor {} data_offsets [{}, {}] end before they begin", path,
              q, t.begin, t.end);

  std::int64_t numel = 0;
  HQQ_EXPECTS(checked_numel(t.shape, numel), "{}: tensor {} shape {} overflows int64 elements",
              path, q, t.shape);
  std::uint64_t nbytes = 0;
  HQQ_EXPECTS(checked_nbytes(numel, t.dtype, nbytes),
              "{}: tensor {} shape {} x {} overflows 64-bit byte count", path, q, t.shape,
              dtype_name(t.dtype));
  HQQ_EXPECTS(t.end - t.begin == nbytes,
              "{}: tensor {} data_offsets [{}, {}] do not match shape {} x {} ({} bytes)", path, q,
              t.begin, t.end, t.shape, dtype_name(t.dtype), nbytes);
  HQQ_EXPECTS(t.end <= data_size,
              "{}: tensor {} data_offsets [{}, {}] lie outside the data section ({} bytes)", path,
              q, t.begin, t.end, data_size);
  return t;
}

SafetensorsFile::SafetensorsFile(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
SafetensorsFile::SafetensorsFile(SafetensorsFile&&) noexcept = default;
SafetensorsFile& SafetensorsFile::operator=(SafetensorsFile&&) noexcept = default;
SafetensorsFile::~SafetensorsFile() = default;

SafetensorsFile SafetensorsFile::open(const std::string& path) {
  auto impl = std::make_unique<Impl>();
  impl->path = path;
  int fd;
  do {
    fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) detail::throw_error("{}: cannot open: {}", path, errno_text(errno));

  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    detail::throw_error("{}: cannot stat: {}", path, errno_text(err));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    detail::throw_error("{}: not a regular file", path);
  }
  const auto file_size = static_cast<std::uint64_t>(st.st_size);
  if (file_size > std::numeric_limits<std::size_t>::max()) {
    ::close(fd);
    detail::throw_error("{}: file of {} bytes is too large to map", path, file_size);
  }
  impl->size = static_cast<std::size_t>(file_size);
  // mmap refuses length 0; a file this short fails validation before any read.
  if (impl->size >= kLengthPrefix) {
    void* m = ::mmap(nullptr, impl->size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (m == MAP_FAILED) {
      const int err = errno;
      ::close(fd);
      detail::throw_error("{}: cannot map: {}", path, errno_text(err));
    }
    impl->map = m;
    impl->map_len = impl->size;
    impl->base = static_cast<const std::uint8_t*>(m);
  }
  ::close(fd);  // the mapping keeps the file alive
  impl->validate();
  return SafetensorsFile(std::move(impl));
}

SafetensorsFile SafetensorsFile::from_bytes(std::vector<std::uint8_t> bytes, std::string name) {
  auto impl = std::make_unique<Impl>();
  impl->path = std::move(name);
  impl->owned = std::move(bytes);
  impl->base = impl->owned.data();
  impl->size = impl->owned.size();
  impl->validate();
  return SafetensorsFile(std::move(impl));
}

const std::vector<TensorInfo>& SafetensorsFile::tensors() const { return impl_->tensors; }

const TensorInfo* SafetensorsFile::find(std::string_view name) const {
  const auto it = impl_->index.find(name);
  return it == impl_->index.end() ? nullptr : &impl_->tensors[it->second];
}

const TensorInfo& SafetensorsFile::at(std::string_view name) const {
  const TensorInfo* t = find(name);
  HQQ_EXPECTS(t != nullptr, "{}: no tensor named {}", impl_->path, quote(name));
  return *t;
}

const std::uint8_t* SafetensorsFile::data(const TensorInfo& t) const {
  // A TensorInfo from another file could point past this mapping.
  HQQ_EXPECTS(t.begin <= t.end && t.end <= impl_->data_size,
              "{}: tensor {} [{}, {}] is not inside this file's data section", impl_->path,
              quote(t.name), t.begin, t.end);
  return impl_->base + impl_->data_start + t.begin;
}

TensorView SafetensorsFile::view(const TensorInfo& t) const {
  TensorView v;
  v.data = data(t);
  v.shape = t.shape;
  v.dtype = t.dtype;
  return v;
}

const std::map<std::string, std::string>& SafetensorsFile::metadata() const {
  return impl_->metadata;
}

const std::string& SafetensorsFile::path() const { return impl_->path; }

// ---------------------------------------------------------------- writer

void SafetensorsWriter::add_view(std::string name, DType dtype, std::vector<std::int64_t> shape,
                                 const void* data, std::uint64_t nbytes) {
  HQQ_EXPECTS(!name.empty(), "safetensors writer: empty tensor name");
  HQQ_EXPECTS(name != "__metadata__",
              "safetensors writer: tensor name '__metadata__' is reserved for the metadata");
  HQQ_EXPECTS(is_utf8(name), "safetensors writer: tensor name {} is not valid UTF-8", quote(name));
  HQQ_EXPECTS(index_.find(name) == index_.end(), "safetensors writer: duplicate tensor name {}",
              quote(name));
  std::int64_t numel = 0;
  HQQ_EXPECTS(checked_numel(shape, numel),
              "safetensors writer: tensor {} shape {} has a negative dimension or overflows",
              quote(name), shape);
  std::uint64_t expected = 0;
  HQQ_EXPECTS(checked_nbytes(numel, dtype, expected),
              "safetensors writer: tensor {} shape {} x {} overflows 64-bit byte count",
              quote(name), shape, dtype_name(dtype));
  HQQ_EXPECTS(nbytes == expected,
              "safetensors writer: tensor {} has {} bytes but shape {} x {} needs {} bytes",
              quote(name), nbytes, shape, dtype_name(dtype), expected);
  HQQ_EXPECTS(data != nullptr || nbytes == 0, "safetensors writer: tensor {} has no data",
              quote(name));
  index_.emplace(name, entries_.size());
  entries_.push_back(Entry{std::move(name), dtype, std::move(shape), data, nbytes, nullptr});
}

void SafetensorsWriter::add(std::string name, DType dtype, std::vector<std::int64_t> shape,
                            std::vector<std::uint8_t> bytes) {
  auto owned = std::make_shared<std::vector<std::uint8_t>>(std::move(bytes));
  add_view(std::move(name), dtype, std::move(shape), owned->data(), owned->size());
  entries_.back().owned = std::move(owned);  // vector data does not move with the shared_ptr
}

void SafetensorsWriter::set_metadata(std::string key, std::string value) {
  HQQ_EXPECTS(is_utf8(key) && is_utf8(value),
              "safetensors writer: metadata entry {} is not valid UTF-8", quote(key));
  metadata_[std::move(key)] = std::move(value);
}

bool SafetensorsWriter::contains(std::string_view name) const {
  return index_.find(name) != index_.end();
}

namespace {

/// Writes all n bytes, retrying short writes and EINTR; 0 or an errno.
int write_all(int fd, const void* data, std::uint64_t n) {
  const auto* p = static_cast<const std::uint8_t*>(data);
  constexpr std::uint64_t kChunk = std::uint64_t{1} << 30;  // Linux caps one write near 2 GiB
  while (n > 0) {
    const ssize_t w = ::write(fd, p, static_cast<std::size_t>(std::min(n, kChunk)));
    if (w < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    if (w == 0) return EIO;
    p += w;
    n -= static_cast<std::uint64_t>(w);
  }
  return 0;
}

std::string parent_dir(const std::string& path) {
  const auto slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

/// A temporary file next to the target; removed on destruction unless committed.
class TempFile {
 public:
  explicit TempFile(const std::string& target) {
    // Not mkstemp: its 0600 mode would stick to the final file, while
    // open(O_EXCL, 0666) gives the usual umask-derived mode of a new file.
    static std::atomic<std::uint64_t> counter{0};
    std::random_device rd;
    std::mt19937_64 rng((std::uint64_t{rd()} << 32) ^ rd() ^ (std::uint64_t(::getpid()) << 16) ^
                        counter.fetch_add(1));
    static constexpr char kAlnum[] =
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    int err = EEXIST;
    for (int attempt = 0; attempt < 100 && err == EEXIST; ++attempt) {
      std::string name = target + ".tmp.";
      for (int i = 0; i < 6; ++i) name += kAlnum[rng() % (sizeof(kAlnum) - 1)];
      fd_ = ::open(name.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
      if (fd_ >= 0) {
        name_ = std::move(name);
        return;
      }
      err = errno;
      if (err == EINTR) err = EEXIST;  // just try another name
    }
    detail::throw_error("{}: cannot create a temporary file in '{}': {}", target,
                        parent_dir(target), errno_text(err));
  }
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;
  ~TempFile() {
    if (fd_ >= 0) ::close(fd_);
    if (!committed_) ::unlink(name_.c_str());
  }

  int fd() const { return fd_; }
  const std::string& name() const { return name_; }
  /// Closes the descriptor; 0 or an errno.
  int close() {
    const int rc = ::close(fd_);
    fd_ = -1;
    // On Linux the descriptor is released even on EINTR, and data was fsynced.
    return rc == 0 || errno == EINTR ? 0 : errno;
  }
  void commit() { committed_ = true; }

 private:
  int fd_ = -1;
  std::string name_;
  bool committed_ = false;
};

}  // namespace

void SafetensorsWriter::write(const std::string& path) const {
  HQQ_EXPECTS(!path.empty(), "safetensors writer: empty output path");

  // Build the header before touching the disk: a bad header creates nothing.
  std::string header;
  std::uint64_t offset = 0;
  try {
    Json h = Json::object();
    if (!metadata_.empty()) {
      Json meta = Json::object();
      for (const auto& [k, v] : metadata_) meta[k] = v;
      h["__metadata__"] = std::move(meta);
    }
    for (const auto& e : entries_) {
      HQQ_EXPECTS(e.nbytes <= std::numeric_limits<std::uint64_t>::max() - offset,
                  "{}: total data size overflows 64 bits", path);
      Json entry = Json::object();
      entry["dtype"] = std::string(dtype_name(e.dtype));
      entry["shape"] = e.shape;
      entry["data_offsets"] = {offset, offset + e.nbytes};
      h[e.name] = std::move(entry);
      offset += e.nbytes;
    }
    header = h.dump();
  } catch (const Json::exception& e) {
    detail::throw_error("{}: cannot build the safetensors header: {}", path, e.what());
  }
  // Pad with spaces so the data section starts 8-byte aligned, as the Rust writer does.
  header.append((8 - header.size() % 8) % 8, ' ');
  HQQ_EXPECTS(header.size() <= kMaxHeaderSize,
              "{}: header of {} bytes exceeds the limit of {} bytes", path, header.size(),
              kMaxHeaderSize);

  std::string prefix(kLengthPrefix, '\0');
  const std::uint64_t n = header.size();
  for (std::size_t i = 0; i < kLengthPrefix; ++i) prefix[i] = static_cast<char>(n >> (8 * i));
  prefix += header;

  TempFile tmp(path);
  const auto fail = [&](const char* what, int err) {
    detail::throw_error("{}: cannot write safetensors file ({} '{}'): {}", path, what, tmp.name(),
                        errno_text(err));
  };
  int err = write_all(tmp.fd(), prefix.data(), prefix.size());
  for (std::size_t i = 0; i < entries_.size() && err == 0; ++i) {
    if (entries_[i].nbytes > 0) err = write_all(tmp.fd(), entries_[i].data, entries_[i].nbytes);
  }
  if (err != 0) fail("writing", err);
  int rc;
  do {
    rc = ::fsync(tmp.fd());
  } while (rc != 0 && errno == EINTR);
  if (rc != 0) fail("syncing", errno);
  if ((err = tmp.close()) != 0) fail("closing", err);
  if (::rename(tmp.name().c_str(), path.c_str()) != 0) fail("renaming", errno);
  tmp.commit();

  // Make the rename itself durable; best effort, the file is already complete.
  const int dfd = ::open(parent_dir(path).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

}  // namespace hqq::io
