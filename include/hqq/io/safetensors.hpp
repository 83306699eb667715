#pragma once
/// \file io/safetensors.hpp
/// safetensors files: a memory-mapped, fully validated reader and an atomic
/// writer (temporary file in the same folder, fsync, rename).

#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "hqq/dtype.hpp"
#include "hqq/tensor.hpp"

namespace hqq::io {

/// One tensor entry of a safetensors header.
struct TensorInfo {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<std::int64_t> shape;  ///< may be empty (a scalar)
  std::uint64_t begin = 0;          ///< byte offset in the data section
  std::uint64_t end = 0;            ///< one past the last byte

  std::int64_t numel() const { return shape_numel(shape); }
  std::uint64_t nbytes() const { return end - begin; }
};

/// A read-only safetensors file. Every rule of DESIGN §3 is checked on open:
/// header <= 100 MB, valid UTF-8 JSON object, known dtypes, sizes that match
/// shape x dtype without overflow, ranges inside the buffer, contiguous and
/// non-overlapping, the data section fully covered. Violations throw hqq::Error
/// naming the file and the problem.
class SafetensorsFile {
 public:
  /// Memory-maps and validates a file.
  static SafetensorsFile open(const std::string& path);
  /// Validates an in-memory image (for tests and tools).
  static SafetensorsFile from_bytes(std::vector<std::uint8_t> bytes, std::string name = "<memory>");

  SafetensorsFile(SafetensorsFile&&) noexcept;
  SafetensorsFile& operator=(SafetensorsFile&&) noexcept;
  ~SafetensorsFile();

  /// Entries in data-offset order.
  const std::vector<TensorInfo>& tensors() const;
  /// Entry by name, or nullptr.
  const TensorInfo* find(std::string_view name) const;
  /// Entry by name; throws hqq::Error naming the file and tensor when missing.
  const TensorInfo& at(std::string_view name) const;
  /// Pointer to the first byte of a tensor (unaligned in general).
  const std::uint8_t* data(const TensorInfo& t) const;
  /// View of a tensor (data may be unaligned: copy before typed access).
  TensorView view(const TensorInfo& t) const;
  /// The "__metadata__" map (empty if absent).
  const std::map<std::string, std::string>& metadata() const;
  /// Path or name given on open.
  const std::string& path() const;

 private:
  struct Impl;
  explicit SafetensorsFile(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

/// Collects tensors and writes a safetensors file atomically. Tensors are
/// written in the order added; names must be unique.
class SafetensorsWriter {
 public:
  /// Adds a tensor whose bytes stay owned by the caller until write() returns.
  void add_view(std::string name, DType dtype, std::vector<std::int64_t> shape,
                const void* data, std::uint64_t nbytes);
  /// Adds a tensor, taking its bytes.
  void add(std::string name, DType dtype, std::vector<std::int64_t> shape,
           std::vector<std::uint8_t> bytes);
  /// Typed convenience: copies `values` (float, half, bfloat16, int32, int64, uint8...).
  template <typename T>
  void add_values(std::string name, DType dtype, std::vector<std::int64_t> shape,
                  const std::vector<T>& values) {
    std::vector<std::uint8_t> bytes(values.size() * sizeof(T));
    if (!bytes.empty()) std::memcpy(bytes.data(), values.data(), bytes.size());
    add(std::move(name), dtype, std::move(shape), std::move(bytes));
  }
  /// Sets a "__metadata__" entry.
  void set_metadata(std::string key, std::string value);
  /// True when a tensor of that name was added.
  bool contains(std::string_view name) const;
  /// Number of tensors added.
  std::size_t size() const { return entries_.size(); }

  /// Writes everything to `path` atomically; on any failure no file (and no
  /// temporary) is left at `path` and hqq::Error says why.
  void write(const std::string& path) const;

 private:
  struct Entry {
    std::string name;
    DType dtype;
    std::vector<std::int64_t> shape;
    const void* data;
    std::uint64_t nbytes;
    std::shared_ptr<std::vector<std::uint8_t>> owned;
  };
  std::vector<Entry> entries_;
  std::map<std::string, std::size_t, std::less<>> index_;  ///< name -> entry, for uniqueness
  std::map<std::string, std::string> metadata_;
};

}  // namespace hqq::io
