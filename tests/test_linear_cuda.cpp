// QuantizedLinear on the CUDA backend (hqq/linear.hpp with backend "cuda"):
// y = x W^T + b with x and y in device memory, against a float64 reference
// of the dequantized weight computed on the host, with the bounds of
// test_linear.cpp: every width x group size x M = 1..16 x activation dtype,
// odd N, bias, the dense path, Llama-sized shapes, moves, and the errors.
// Every forward forces the CUDA-core GEMV (LinearKernelChoice::kGemv), whose
// f32 bounds these are; kAuto would send f16/bf16 batches of
// tensor_core_min_m() rows or more to the tensor-core GEMM, tested with its
// own bounds in test_gemm_cuda.cpp.
//
// The reference never touches the layout code: W = hqq::dequantize(q) on the
// CPU backend, y_ref[m, n] = sum_k W[n, k] * x[m, k] + b[n] in double over the
// values the activations and the bias hold. Error of a batch: per output row
// m, max_n |y - y_ref| / max_n |y_ref|. y is a device buffer filled with 0xFF
// bytes (NaN in every float dtype) before each forward, with a guard behind
// the M x N outputs that must stay untouched.
//
// Every GPU test derives from GpuFixture, which skips visibly (with the
// reason) when the build has no CUDA or no device is usable; the
// CudaLinearNoDevice tests run exactly then and check the errors that say
// why. Seeds are fresh per test and printed with every failure;
// HQQ_TEST_SEED=<n> replays one, HQQ_TEST_VERBOSE=1 prints the worst errors.

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "hqq/cuda.hpp"
#include "hqq/hqq.hpp"
#include "hqq/io/checkpoint.hpp"
#include "hqq/io/safetensors.hpp"
#include "hqq/linear.hpp"
#include "linear_test_helpers.hpp"
#include "test_helpers.hpp"

namespace hqq {

[[maybe_unused]] static void PrintTo(DType t, std::ostream* os) { *os << dtype_name(t); }

namespace {

using cuda::DeviceBuffer;
using detail::LinearPath;
using test::error_of;
using test::fresh_seed;
using test::GpuFixture;
using test::no_gpu_reason;
using test::seed_note;
using namespace test;  // linear_test_helpers.hpp
using ::testing::HasSubstr;

using CudaLinear = GpuFixture<::testing::Test>;

LinearOptions cuda_options() {
  LinearOptions o;
  o.backend = "cuda";
  return o;
}

/// The CUDA-core GEMV, forced: its f32 bounds are tighter than the
/// tensor-core GEMM's (test_gemm_cuda.cpp), which kAuto picks from
/// tensor_core_min_m() rows on for f16/bf16 x.
ForwardOptions gemv() {
  ForwardOptions o;
  o.kernel = LinearKernelChoice::kGemv;
  return o;
}

/// One batch through a cuda layer against the reference of W (+ bias values).
double check_batch(const QuantizedLinear& layer, const std::vector<float>& W, const std::vector<float>& bias,
                   std::int64_t M, DType xt, DType yt, std::mt19937& rng, const std::string& what) {
  const std::int64_t N = layer.out_features(), K = layer.in_features();
  const Typed x = typed(normal(static_cast<std::size_t>(M * K), rng), xt, {M, K});
  const std::vector<float> y = gpu_forward(layer, x, M, yt, gemv());
  const std::vector<double> ref = reference(W, N, K, x.values, M, bias);
  const std::vector<double> row_floor = few_output_row_floor(x.values, W, M, N, K);
  const RowError e = row_error(y, ref, M, N, row_floor);
  EXPECT_LE(e.err, tolerance(yt)) << what << ", M = " << M << ", x " << dtype_name(xt) << ", y " << dtype_name(yt)
                                  << ": " << e.str();
  return e.err;
}

// ============================================================ correctness sweep

using WidthGroup = std::tuple<int, std::int64_t>;
using CudaLinearSweep = GpuFixture<::testing::TestWithParam<WidthGroup>>;

// Every activation dtype, M = 1..16, bias on (odd M) and off (even M), odd N
// (K = 1024: 37 * 1024 / G grouped rows, a multiple of 8 as 1-bit packing needs).
TEST_P(CudaLinearSweep, MatchesFloat64ReferenceOfDequantizedWeight) {
  const auto [nbits, group] = GetParam();
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937 rng(seed);
  const std::int64_t N = 37, K = 1024;
  const QuantizedTensor q = quantized_weight(N, K, config(nbits, group), seed);
  const std::vector<float> W = dequantized(q);
  const Typed bias = typed(normal(static_cast<std::size_t>(N), rng, 0.5f), DType::kF32, {N});
  const QuantizedLinear plain(q, {}, cuda_options());
  const QuantizedLinear biased(q, bias.view(), cuda_options());
  ASSERT_EQ(plain.backend(), "cuda");
  ASSERT_EQ(plain.path(), LinearPath::kPacked);
  EXPECT_TRUE(biased.has_bias());
  for (DType t : kActDtypes) {
    double worst = 0;
    for (std::int64_t M = 1; M <= 16; ++M) {
      const bool with_bias = M % 2 == 1;
      worst = std::max(worst, check_batch(with_bias ? biased : plain, W, with_bias ? bias.values : std::vector<float>{},
                                          M, t, t, rng, case_name(nbits, group)));
    }
    if (verbose()) std::cout << "[ error ] " << case_name(nbits, group) << " " << dtype_name(t) << ": " << worst << "\n";
  }
}

INSTANTIATE_TEST_SUITE_P(AllWidths, CudaLinearSweep,
                         ::testing::Combine(::testing::ValuesIn(kNbits), ::testing::Values<std::int64_t>(32, 64, 128)),
                         [](const auto& info) { return case_name(std::get<0>(info.param), std::get<1>(info.param)); });

// f32 and bf16 metadata (f32 pairs in the layout) next to f16 metadata.
TEST_F(CudaLinear, EveryScaleDtype) {
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937 rng(seed);
  const std::int64_t N = 21, K = 512;
  for (DType sdt : {DType::kF32, DType::kBF16, DType::kF16}) {
    for (int nbits : kNbits) {
      const QuantizedTensor q = quantized_weight(N, K, config(nbits, 64, 1, sdt), seed + nbits);
      const QuantizedLinear layer(q, {}, cuda_options());
      const std::vector<float> W = dequantized(q);
      for (std::int64_t M : {1, 4, 9}) {
        for (DType t : kActDtypes) {
          check_batch(layer, W, {}, M, t, t, rng, case_name(nbits, 64) + " scale " + std::string(dtype_name(sdt)));
        }
      }
    }
  }
}

TEST_F(CudaLinear, MixedActivationAndOutputDtypes) {
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937 rng(seed);
  const QuantizedTensor q = quantized_weight(45, 768, config(4, 64), seed);
  const std::vector<float> W = dequantized(q);
  const Typed bias = typed(normal(45, rng, 0.5f), DType::kBF16, {45});
  const QuantizedLinear layer(q, bias.view(), cuda_options());
  for (DType xt : kActDtypes) {
    for (DType yt : kActDtypes) {
      for (std::int64_t M : {1, 6, 13}) check_batch(layer, W, bias.values, M, xt, yt, rng, "4bit_g64");
    }
  }
}

// Odd shapes, every width, and batches past the tuned range (prefill-sized M).
TEST_F(CudaLinear, OddShapesAndLargerBatches) {
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937 rng(seed);
  struct Shape {
    std::int64_t N, K, G;
  };
  for (const Shape s : {Shape{101, 3072, 64}, Shape{101, 3072, 384}, Shape{1, 256, 32}, Shape{7, 2048, 256}}) {
    for (int nbits : kNbits) {
      const QuantizedTensor q = quantized_weight(s.N, s.K, config(nbits, s.G), seed + nbits);
      const Typed bias = typed(normal(static_cast<std::size_t>(s.N), rng, 0.5f), DType::kF16, {s.N});
      const QuantizedLinear layer(q, bias.view(), cuda_options());
      const std::vector<float> W = dequantized(q);
      const std::string what = case_name(nbits, s.G) + " N=" + std::to_string(s.N) + " K=" + std::to_string(s.K);
      for (std::int64_t M : {1, 3, 8, 16, 33}) {
        check_batch(layer, W, bias.values, M, kActDtypes[M % 3], kActDtypes[M % 3], rng, what);
      }
    }
  }
  const QuantizedTensor q = quantized_weight(101, 3072, config(4, 64), seed);
  const QuantizedLinear layer(q, {}, cuda_options());
  const std::vector<float> W = dequantized(q);
  for (std::int64_t M : {64, 100, 256}) {
    for (DType t : kActDtypes) check_batch(layer, W, {}, M, t, t, rng, "4bit_g64 prefill");
  }
}

// Uniformly random codes (every level; zeros slightly outside the code range).
TEST_F(CudaLinear, RandomCodesEveryLevel) {
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937 rng(seed);
  for (int nbits : kNbits) {
    for (std::int64_t group : {32, 64, 128}) {
      const QuantizedTensor q = random_weight(13, 1024, nbits, group, DType::kF16, rng);
      const QuantizedLinear layer(q, {}, cuda_options());
      const std::vector<float> W = dequantized(q);
      for (std::int64_t M : {1, 2, 5, 16}) {
        check_batch(layer, W, {}, M, DType::kF32, DType::kF32, rng, case_name(nbits, group) + " random codes");
      }
    }
  }
}

// Axis 0 and group sizes not a multiple of 32: the dense path, same bounds.
TEST_F(CudaLinear, DensePathForAxis0AndOddGroupSizes) {
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937 rng(seed);
  struct Case {
    int nbits, axis;
    std::int64_t group, N, K;
  };
  const Case cases[] = {
      {4, 0, 64, 37, 1024}, {1, 0, 32, 37, 512},  {8, 0, 64, 40, 96},
      {4, 1, 48, 37, 384},  {2, 1, 16, 37, 1024}, {3, 1, 48, 21, 480},
  };
  for (const Case& c : cases) {
    const std::string what = case_name(c.nbits, c.group) + " axis " + std::to_string(c.axis) +
                             " N=" + std::to_string(c.N) + " K=" + std::to_string(c.K);
    const QuantizedTensor q = quantized_weight(c.N, c.K, config(c.nbits, c.group, c.axis), seed + c.nbits);
    const std::vector<float> W = dequantized(q);
    const Typed bias = typed(normal(static_cast<std::size_t>(c.N), rng, 0.5f), DType::kF32, {c.N});
    const QuantizedLinear plain(q, {}, cuda_options());
    const QuantizedLinear biased(q, bias.view(), cuda_options());
    ASSERT_EQ(plain.path(), LinearPath::kDense) << what;
    for (DType t : kActDtypes) {
      for (std::int64_t M = 1; M <= 16; ++M) {
        const bool with_bias = M % 2 == 1;
        check_batch(with_bias ? biased : plain, W, with_bias ? bias.values : std::vector<float>{}, M, t, t, rng,
                    what);
      }
    }
  }
}

// Llama-7B linear shapes (q/k/v/o [4096, 4096], up/gate [11008, 4096],
// down [4096, 11008]) for a few batch sizes.
using LargeParam = std::tuple<int, std::int64_t>;
using CudaLinearLarge = GpuFixture<::testing::TestWithParam<LargeParam>>;

TEST_P(CudaLinearLarge, LlamaShapes) {
  const auto [nbits, group] = GetParam();
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937 rng(seed);
  struct Shape {
    std::int64_t N, K;
  };
  std::vector<Shape> shapes = {{4096, 4096}};
  if (nbits == 4) shapes.insert(shapes.end(), {Shape{11008, 4096}, Shape{4096, 11008}});
  for (const Shape s : shapes) {
    const std::string what = case_name(nbits, group) + " N=" + std::to_string(s.N) + " K=" + std::to_string(s.K);
    const QuantizedTensor q = random_weight(s.N, s.K, nbits, group, DType::kF16, rng);
    const std::vector<float> W = dequantized(q);
    const Typed bias = typed(normal(static_cast<std::size_t>(s.N), rng, 0.5f), DType::kF16, {s.N});
    const QuantizedLinear layer(q, bias.view(), cuda_options());
    ASSERT_EQ(layer.path(), LinearPath::kPacked) << what;
    const std::int64_t Ms[] = {1, 3, 8, 16};
    const DType ts[] = {DType::kF16, DType::kF32, DType::kBF16, DType::kF16};
    for (int i = 0; i < 4; ++i) check_batch(layer, W, bias.values, Ms[i], ts[i], ts[i], rng, what);
  }
}

INSTANTIATE_TEST_SUITE_P(Widths, CudaLinearLarge,
                         ::testing::Values(LargeParam{4, 64}, LargeParam{4, 128}, LargeParam{8, 128},
                                           LargeParam{3, 64}, LargeParam{2, 64}, LargeParam{1, 128}),
                         [](const auto& info) { return case_name(std::get<0>(info.param), std::get<1>(info.param)); });

// An axis-1 weight whose groups run across rows (K not a multiple of G).
// DISABLED until the library handles it: make_linear_layout takes the packed
// path for it and the kernels index groups per row (see test_linear.cpp).
TEST_F(CudaLinear, GroupsStraddlingRows) {
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937 rng(seed);
  const QuantizedTensor q = random_weight(4, 96, 8, 64, DType::kF16, rng);
  const QuantizedLinear layer(q, {}, cuda_options());
  check_batch(layer, dequantized(q), {}, 3, DType::kF32, DType::kF32, rng, "N=4 K=96 G=64");
}

// ============================================================ shapes, construction, moves

TEST_F(CudaLinear, VectorBatchedAndEmptyShapes) {
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937 rng(seed);
  const std::int64_t N = 37, K = 1024;
  const QuantizedTensor q = quantized_weight(N, K, config(4, 64), seed);
  const std::vector<float> W = dequantized(q);
  const Typed bias = typed(normal(N, rng, 0.5f), DType::kF32, {N});
  const QuantizedLinear layer(q, bias.view(), cuda_options());
  for (DType t : kActDtypes) {
    const Typed x = typed(normal(K, rng), t, {K});
    const std::vector<double> ref = reference(W, N, K, x.values, 1, bias.values);
    EXPECT_LE(row_error(gpu_forward(layer, x, 1, t, gemv(), {N}), ref, 1, N).err, tolerance(t)) << "1-D x, " << dtype_name(t);
    EXPECT_LE(row_error(gpu_forward(layer, x, 1, t, gemv(), {1, N}), ref, 1, N).err, tolerance(t))
        << "1-D x, y [1, N], " << dtype_name(t);
    const Typed x3 = typed(normal(6 * K, rng), t, {2, 3, K});
    const std::vector<double> ref3 = reference(W, N, K, x3.values, 6, bias.values);
    EXPECT_LE(row_error(gpu_forward(layer, x3, 6, t, gemv(), {2, 3, N}), ref3, 6, N).err, tolerance(t))
        << "3-D x, " << dtype_name(t);
  }
  // M = 0: nothing to do, no pointer needed, no throw.
  EXPECT_NO_THROW(layer.forward(TensorView{nullptr, {0, K}, DType::kF16}, MutableTensorView{nullptr, {0, N}}));
}

TEST_F(CudaLinear, FromDenseAndFromCheckpoint) {
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937 rng(seed);
  const std::int64_t N = 37, K = 1024;
  const std::vector<float> w = test::heavy_tailed(static_cast<std::size_t>(N * K), seed);
  const Typed wv = typed(w, DType::kF16, {N, K});
  const Typed bias = typed(normal(N, rng, 0.5f), DType::kF16, {N});
  // from_dense quantizes on the layer's backend (the GPU) and repacks.
  const QuantizedLinear a = QuantizedLinear::from_dense(wv.view(), config(4, 64), bias.view(), cuda_options());
  const QuantizedTensor qa = a.to_quantized();
  for (std::int64_t M : {1, 8}) check_batch(a, dequantized(qa), bias.values, M, DType::kF16, DType::kF16, rng, "from_dense");

  io::SafetensorsWriter writer;
  io::add_quantized_layer(writer, "mlp.down_proj", qa);
  writer.add("mlp.down_proj.bias", DType::kF16, {N}, bias.bytes);
  const std::filesystem::path dir = std::filesystem::path(HQQ_TEST_TMP_DIR) / "linear_cuda";
  std::filesystem::create_directories(dir);
  const std::string path = (dir / "from_checkpoint.safetensors").string();
  writer.write(path);
  const io::SafetensorsFile file = io::SafetensorsFile::open(path);
  const QuantizedLinear b = QuantizedLinear::from_checkpoint(file, "mlp.down_proj", cuda_options());
  EXPECT_EQ(b.backend(), "cuda");
  EXPECT_TRUE(b.has_bias());
  for (std::int64_t M : {1, 16}) check_batch(b, dequantized(qa), bias.values, M, DType::kBF16, DType::kBF16, rng, "from_checkpoint");
}

// The device copies live with the layer: moves keep it usable.
TEST_F(CudaLinear, MovesKeepTheLayerUsable) {
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937 rng(seed);
  const QuantizedTensor q = quantized_weight(37, 1024, config(4, 64), seed);
  const QuantizedTensor q2 = quantized_weight(37, 1024, config(2, 32, 0), seed + 1);
  const std::vector<float> W = dequantized(q);
  std::vector<QuantizedLinear> layers;
  {
    QuantizedLinear original(q, {}, cuda_options());
    QuantizedLinear moved(std::move(original));
    check_batch(moved, W, {}, 3, DType::kF16, DType::kF16, rng, "move-constructed");
    QuantizedLinear target(q2, {}, cuda_options());
    target = std::move(moved);
    check_batch(target, W, {}, 4, DType::kF32, DType::kF32, rng, "move-assigned");
    layers.push_back(std::move(target));
    for (int i = 0; i < 8; ++i) layers.emplace_back(q2, TensorView{}, cuda_options());
  }
  check_batch(layers[0], W, {}, 16, DType::kBF16, DType::kBF16, rng, "moved into a growing vector");
  check_batch(layers[8], dequantized(q2), {}, 2, DType::kF32, DType::kF32, rng, "dense, moved into a vector");
}

// "auto" picks the device when one is usable (unless HQQ_BACKEND says otherwise).
TEST_F(CudaLinear, AutoPicksTheDevice) {
  const char* env = std::getenv("HQQ_BACKEND");
  if (env != nullptr && *env != '\0' && std::string(env) != "auto") GTEST_SKIP() << "HQQ_BACKEND=" << env;
  const QuantizedTensor q = quantized_weight(8, 256, config(4, 64), 5);
  EXPECT_EQ(QuantizedLinear(q).backend(), "cuda");
}

// ============================================================ errors

// A cuda layer takes device (or managed) pointers: a host x or y is refused
// with a message that says so, before any kernel runs.
TEST_F(CudaLinear, HostPointersAreAClearError) {
  const std::int64_t N = 37, K = 1024, M = 2;
  const QuantizedTensor q = quantized_weight(N, K, config(4, 64), 7);
  const QuantizedLinear layer(q, {}, cuda_options());
  std::vector<float> hx(M * K, 0.5f), hy(M * N);
  DeviceBuffer dx = DeviceBuffer::from(hx), dy(hy.size() * sizeof(float));
  EXPECT_THAT(error_of([&] {
                layer.forward(TensorView{hx.data(), {M, K}, DType::kF32}, MutableTensorView{dy.data(), {M, N}});
              }),
              HasSubstr("device"));
  EXPECT_THAT(error_of([&] {
                layer.forward(TensorView{dx.data(), {M, K}, DType::kF32}, MutableTensorView{hy.data(), {M, N}});
              }),
              HasSubstr("device"));
  // A device pointer not aligned to its element would fault the device: refused.
  EXPECT_THAT(error_of([&] {
                layer.forward(TensorView{static_cast<char*>(dx.data()) + 2, {1, K}, DType::kF32},
                              MutableTensorView{dy.data(), {1, N}});
              }),
              HasSubstr("aligned"));
  // The shape checks are the backend-independent ones.
  EXPECT_THAT(error_of([&] {
                layer.forward(TensorView{dx.data(), {M, K / 2}, DType::kF32}, MutableTensorView{dy.data(), {M, N}});
              }),
              HasSubstr("in_features = 1024"));
}

// Without a usable device a cuda layer cannot be made, and the error says
// why (naming CUDA); "auto" falls back to the CPU.
TEST(CudaLinearNoDevice, CudaLayerThrowsSayingWhy) {
  const Support s = cuda::available();
  if (s.ok) {
    GTEST_SKIP() << "a CUDA device is usable (" << cuda::device_description()
                 << "); this test checks the no-device errors";
  }
  const QuantizedTensor q = quantized_weight(37, 1024, config(4, 64), 11);
  const std::string msg = error_of([&] { QuantizedLinear(q, {}, cuda_options()); });
  EXPECT_THAT(msg, HasSubstr("CUDA"));
  EXPECT_THAT(msg, HasSubstr(kCudaEnabled ? "not usable" : "no CUDA backend"));
  const std::vector<float> w = test::heavy_tailed(37 * 1024, 12);
  EXPECT_THAT(error_of([&] {
                QuantizedLinear::from_dense(TensorView{w.data(), {37, 1024}, DType::kF32}, config(4, 64), {},
                                            cuda_options());
              }),
              HasSubstr("CUDA"));
  const char* env = std::getenv("HQQ_BACKEND");
  if (env == nullptr || *env == '\0' || std::string(env) == "auto" || std::string(env) == "cpu") {
    EXPECT_EQ(QuantizedLinear(q).backend(), "cpu");
  }
}

// Device buffers for the activations cannot be made either; the message names CUDA.
TEST(CudaLinearNoDevice, DeviceBuffersThrowSayingWhy) {
  if (cuda::available().ok) GTEST_SKIP() << "a CUDA device is usable; this test checks the no-device errors";
  EXPECT_THAT(error_of([] { DeviceBuffer b(4096); }), HasSubstr("CUDA"));
}

}  // namespace
}  // namespace hqq
