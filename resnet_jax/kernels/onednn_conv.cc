// oneDNN convolutions as XLA FFI handlers: forward, backward-data, backward-weights.
//
// Activations are NHWC and kernels HWIO, as JAX holds them; oneDNN picks its own kernel layout
// ("any") and the handlers reorder the (small) kernel or kernel gradient to and from it. Each
// distinct geometry's primitive is created once and cached; execution uses a scratchpad
// allocated per call (user scratchpad mode), so one primitive may run on several XLA threads at
// once (virtual CPU devices). Built and loaded by resnet_jax/kernels/onednn.py.
#include <omp.h>

#include <cstdint>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;

namespace {

enum class Kind { kForward, kBackwardData, kBackwardWeights };

struct Entry {
  dnnl::primitive primitive;
  memory::desc weights;  // oneDNN's layout of the kernel (forward, backward data) or its gradient
  memory::desc scratchpad;
};

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// x: NHWC, w: HWIO, y: NHWC (the JAX shapes); strides and (lo, hi) paddings per spatial axis.
using Key = std::tuple<int, std::vector<int64_t>, std::vector<int64_t>, std::vector<int64_t>,
                       std::vector<int64_t>>;

std::vector<int64_t> Dims(ffi::Span<const int64_t> d) { return {d.begin(), d.end()}; }

const Entry& Lookup(Kind kind, const std::vector<int64_t>& x, const std::vector<int64_t>& w,
                    const std::vector<int64_t>& y, const std::vector<int64_t>& geometry) {
  static std::mutex mutex;
  static std::map<Key, std::unique_ptr<Entry>> cache;
  Key key{static_cast<int>(kind), x, w, y, geometry};
  std::lock_guard<std::mutex> lock(mutex);
  auto it = cache.find(key);
  if (it != cache.end()) return *it->second;

  auto& engine = Engine();
  const auto f32 = memory::data_type::f32;
  memory::desc src({x[0], x[3], x[1], x[2]}, f32, memory::format_tag::nhwc);
  memory::desc dst({y[0], y[3], y[1], y[2]}, f32, memory::format_tag::nhwc);
  memory::desc any_weights({w[3], w[2], w[0], w[1]}, f32, memory::format_tag::any);
  memory::dims strides{geometry[0], geometry[1]};
  memory::dims pad_lo{geometry[2], geometry[4]}, pad_hi{geometry[3], geometry[5]};
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  auto algorithm = dnnl::algorithm::convolution_direct;
  dnnl::convolution_forward::primitive_desc forward(
      engine, dnnl::prop_kind::forward_training, algorithm, src, any_weights, dst, strides,
      pad_lo, pad_hi, attr);
  auto entry = std::make_unique<Entry>();
  if (kind == Kind::kForward) {
    entry->primitive = dnnl::convolution_forward(forward);
    entry->weights = forward.weights_desc();
    entry->scratchpad = forward.scratchpad_desc();
  } else if (kind == Kind::kBackwardData) {
    dnnl::convolution_backward_data::primitive_desc pd(
        engine, algorithm, src, any_weights, dst, strides, pad_lo, pad_hi, forward, attr);
    entry->primitive = dnnl::convolution_backward_data(pd);
    entry->weights = pd.weights_desc();
    entry->scratchpad = pd.scratchpad_desc();
  } else {
    dnnl::convolution_backward_weights::primitive_desc pd(
        engine, algorithm, src, any_weights, dst, strides, pad_lo, pad_hi, forward, attr);
    entry->primitive = dnnl::convolution_backward_weights(pd);
    entry->weights = pd.diff_weights_desc();
    entry->scratchpad = pd.scratchpad_desc();
  }
  return *cache.emplace(key, std::move(entry)).first->second;
}

memory::desc Plain(const std::vector<int64_t>& d, memory::format_tag tag) {
  return memory::desc({d[0], d[1], d[2], d[3]}, memory::data_type::f32, tag);
}

ffi::Error Run(Kind kind, void* x_data, void* w_data, void* y_data,
               const std::vector<int64_t>& x, const std::vector<int64_t>& w,
               const std::vector<int64_t>& y, const std::vector<int64_t>& geometry,
               int64_t threads) {
  try {
    if (threads > 0) omp_set_num_threads(static_cast<int>(threads));
    const Entry& entry = Lookup(kind, x, w, y, geometry);
    auto& engine = Engine();
    dnnl::stream stream(engine);
    memory src(Plain({x[0], x[3], x[1], x[2]}, memory::format_tag::nhwc), engine, x_data);
    memory dst(Plain({y[0], y[3], y[1], y[2]}, memory::format_tag::nhwc), engine, y_data);
    memory weights(Plain({w[3], w[2], w[0], w[1]}, memory::format_tag::hwio), engine, w_data);
    memory scratchpad(entry.scratchpad, engine);
    memory packed = weights;
    if (entry.weights != weights.get_desc()) packed = memory(entry.weights, engine);
    if (kind != Kind::kBackwardWeights && packed != weights) {
      dnnl::reorder(weights, packed).execute(stream, weights, packed);
    }
    if (kind == Kind::kForward) {
      entry.primitive.execute(stream, {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, packed},
                                       {DNNL_ARG_DST, dst}, {DNNL_ARG_SCRATCHPAD, scratchpad}});
    } else if (kind == Kind::kBackwardData) {
      entry.primitive.execute(stream, {{DNNL_ARG_DIFF_DST, dst}, {DNNL_ARG_WEIGHTS, packed},
                                       {DNNL_ARG_DIFF_SRC, src}, {DNNL_ARG_SCRATCHPAD, scratchpad}});
    } else {
      entry.primitive.execute(stream, {{DNNL_ARG_SRC, src}, {DNNL_ARG_DIFF_DST, dst},
                                       {DNNL_ARG_DIFF_WEIGHTS, packed},
                                       {DNNL_ARG_SCRATCHPAD, scratchpad}});
      if (packed != weights) dnnl::reorder(packed, weights).execute(stream, packed, weights);
    }
    stream.wait();
  } catch (const std::exception& e) {  // dnnl::error, std::bad_alloc: never across the C ABI.
    return ffi::Error(ffi::ErrorCode::kInternal, std::string("oneDNN convolution: ") + e.what());
  }
  return ffi::Error::Success();
}

std::vector<int64_t> Geometry(int64_t sh, int64_t sw, int64_t pt, int64_t pb, int64_t pl,
                              int64_t pr) {
  return {sh, sw, pt, pb, pl, pr};
}

ffi::Error Forward(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w, ffi::ResultBuffer<ffi::F32> y,
                   int64_t sh, int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr,
                   int64_t threads) {
  return Run(Kind::kForward, x.untyped_data(), w.untyped_data(), y->untyped_data(),
             Dims(x.dimensions()), Dims(w.dimensions()), Dims(y->dimensions()),
             Geometry(sh, sw, pt, pb, pl, pr), threads);
}

ffi::Error BackwardData(ffi::Buffer<ffi::F32> gy, ffi::Buffer<ffi::F32> w,
                        ffi::ResultBuffer<ffi::F32> gx, int64_t sh, int64_t sw, int64_t pt,
                        int64_t pb, int64_t pl, int64_t pr, int64_t threads) {
  return Run(Kind::kBackwardData, gx->untyped_data(), w.untyped_data(), gy.untyped_data(),
             Dims(gx->dimensions()), Dims(w.dimensions()), Dims(gy.dimensions()),
             Geometry(sh, sw, pt, pb, pl, pr), threads);
}

// `after` is not read: it is an operand only so that XLA orders this call after its producer.
ffi::Error BackwardWeights(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> gy,
                           ffi::AnyBuffer after, ffi::ResultBuffer<ffi::F32> gw, int64_t sh,
                           int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr,
                           int64_t threads) {
  return Run(Kind::kBackwardWeights, x.untyped_data(), gw->untyped_data(), gy.untyped_data(),
             Dims(x.dimensions()), Dims(gw->dimensions()), Dims(gy.dimensions()),
             Geometry(sh, sw, pt, pb, pl, pr), threads);
}

}  // namespace

#define GEOMETRY_ATTRS                                                              \
  .Attr<int64_t>("sh").Attr<int64_t>("sw").Attr<int64_t>("pt").Attr<int64_t>("pb") \
      .Attr<int64_t>("pl").Attr<int64_t>("pr").Attr<int64_t>("threads")

XLA_FFI_DEFINE_HANDLER_SYMBOL(ResnetJaxOnednnConvForward, Forward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>() GEOMETRY_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(ResnetJaxOnednnConvBackwardData, BackwardData,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>() GEOMETRY_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(ResnetJaxOnednnConvBackwardWeights, BackwardWeights,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::Buffer<ffi::F32>>() GEOMETRY_ATTRS);
