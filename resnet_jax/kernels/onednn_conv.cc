// oneDNN convolutions as XLA FFI handlers: forward, backward-data, backward-weights.
//
// Activations are NHWC and kernels HWIO, as JAX holds them; oneDNN picks its own kernel layout
// ("any") and the handlers reorder the (small) kernel or kernel gradient to and from it. Each
// distinct geometry's primitive is created once and cached; execution uses a scratchpad
// allocated per call (user scratchpad mode), so one primitive may run on several threads at
// once. A call's `threads` (its device's share of the cores) split its batch into slices, each
// run single-threaded on XLA's own CPU thread pool (see Run). Activations and kernel are float32
// or bfloat16 (oneDNN's bf16 kernels, accumulating in float32); a kernel gradient is always
// float32, so the slices' partial gradients are summed and returned without bf16 rounding.
// Built and loaded by resnet_jax/kernels/onednn.py.
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <initializer_list>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
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
// Primitives are keyed by the OpenMP threads they run on too: oneDNN sizes its work split then,
// and by the activations' data type.
using Key = std::tuple<int, std::vector<int64_t>, std::vector<int64_t>, std::vector<int64_t>,
                       std::vector<int64_t>, int, int>;

std::vector<int64_t> Dims(ffi::Span<const int64_t> d) { return {d.begin(), d.end()}; }

// Creates (once per key) the primitive for `omp_threads` OpenMP threads; the caller has set
// that many as its thread's OpenMP default. `type`: activations' and kernel's data type (the
// kernel gradient is float32).
const Entry& Lookup(Kind kind, const std::vector<int64_t>& x, const std::vector<int64_t>& w,
                    const std::vector<int64_t>& y, const std::vector<int64_t>& geometry,
                    int omp_threads, memory::data_type type) {
  static std::mutex mutex;
  static std::map<Key, std::unique_ptr<Entry>> cache;
  Key key{static_cast<int>(kind), x, w, y, geometry, omp_threads, static_cast<int>(type)};
  std::lock_guard<std::mutex> lock(mutex);
  auto it = cache.find(key);
  if (it != cache.end()) return *it->second;

  auto& engine = Engine();
  memory::desc src({x[0], x[3], x[1], x[2]}, type, memory::format_tag::nhwc);
  memory::desc dst({y[0], y[3], y[1], y[2]}, type, memory::format_tag::nhwc);
  memory::desc any_weights({w[3], w[2], w[0], w[1]}, type, memory::format_tag::any);
  memory::desc any_weights_f32({w[3], w[2], w[0], w[1]}, memory::data_type::f32,
                               memory::format_tag::any);
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
        engine, algorithm, src, any_weights_f32, dst, strides, pad_lo, pad_hi, forward, attr);
    entry->primitive = dnnl::convolution_backward_weights(pd);
    entry->weights = pd.diff_weights_desc();
    entry->scratchpad = pd.scratchpad_desc();
  }
  return *cache.emplace(key, std::move(entry)).first->second;
}

memory::desc Plain(const std::vector<int64_t>& d, memory::format_tag tag,
                   memory::data_type type) {
  return memory::desc({d[0], d[1], d[2], d[3]}, type, tag);
}

// One convolution call's operands. x and y are NHWC, so examples [begin, end) of the batch are
// one contiguous slice of each.
struct Call {
  Kind kind;
  char* x;
  void* w;  // The HWIO kernel (of `type`), or the kernel gradient's output (float32).
  char* y;
  std::vector<int64_t> x_dims, w_dims, y_dims, geometry;
  memory::data_type type;  // Of x, y and the kernel (float32 or bfloat16).
  // The kernel's (forward, backward data) or its gradient's (float32) type.
  memory::data_type weights_type() const {
    return kind == Kind::kBackwardWeights ? memory::data_type::f32 : type;
  }
};

std::vector<int64_t> WithBatch(std::vector<int64_t> dims, int64_t batch) {
  dims[0] = batch;
  return dims;
}

// Runs the primitive on examples [begin, end) with `omp_threads` OpenMP threads. `packed` is
// the kernel in the first slice's oneDNN layout (forward, backward data); for the kernel
// gradient, the buffer in that layout that receives this slice's gradient. A shorter last
// slice's primitive may want another layout: then the kernel or gradient is reordered.
void RunSlice(const Call& call, int64_t begin, int64_t end, memory packed, int omp_threads) {
  omp_set_num_threads(omp_threads);
  auto x_dims = WithBatch(call.x_dims, end - begin);
  auto y_dims = WithBatch(call.y_dims, end - begin);
  const Entry& entry = Lookup(call.kind, x_dims, call.w_dims, y_dims, call.geometry,
                              omp_threads, call.type);
  auto& engine = Engine();
  dnnl::stream stream(engine);
  int64_t element = static_cast<int64_t>(memory::data_type_size(call.type));
  int64_t x_example = call.x_dims[1] * call.x_dims[2] * call.x_dims[3] * element;
  int64_t y_example = call.y_dims[1] * call.y_dims[2] * call.y_dims[3] * element;
  memory src(Plain({x_dims[0], x_dims[3], x_dims[1], x_dims[2]}, memory::format_tag::nhwc,
                   call.type), engine, call.x + begin * x_example);
  memory dst(Plain({y_dims[0], y_dims[3], y_dims[1], y_dims[2]}, memory::format_tag::nhwc,
                   call.type), engine, call.y + begin * y_example);
  memory scratchpad(entry.scratchpad, engine);
  bool own_layout = entry.weights != packed.get_desc();
  memory weights = own_layout ? memory(entry.weights, engine) : packed;
  if (own_layout && call.kind != Kind::kBackwardWeights) {
    dnnl::reorder(packed, weights).execute(stream, packed, weights);
  }
  if (call.kind == Kind::kForward) {
    entry.primitive.execute(stream, {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, weights},
                                     {DNNL_ARG_DST, dst}, {DNNL_ARG_SCRATCHPAD, scratchpad}});
  } else if (call.kind == Kind::kBackwardData) {
    entry.primitive.execute(stream, {{DNNL_ARG_DIFF_DST, dst}, {DNNL_ARG_WEIGHTS, weights},
                                     {DNNL_ARG_DIFF_SRC, src}, {DNNL_ARG_SCRATCHPAD, scratchpad}});
  } else {
    entry.primitive.execute(stream, {{DNNL_ARG_SRC, src}, {DNNL_ARG_DIFF_DST, dst},
                                     {DNNL_ARG_DIFF_WEIGHTS, weights},
                                     {DNNL_ARG_SCRATCHPAD, scratchpad}});
    if (own_layout) dnnl::reorder(weights, packed).execute(stream, weights, packed);
  }
  stream.wait();
}

// Slices of one call claimed by whichever thread comes first: the caller's, or the tasks it
// scheduled on XLA's pool. The caller waits only for slices already claimed (running), never
// for a task that has not started, so a busy or one-thread pool cannot deadlock it. Shared so
// that a task starting after the call returned finds no slice and touches nothing else.
struct Slices {
  std::atomic<int> next{0};
  std::atomic<int> done{0};
  std::mutex mutex;
  std::condition_variable all_done;
  std::string error;
};

template <typename Run>
void Claim(Slices& slices, int count, Run& run) {
  for (int i; (i = slices.next.fetch_add(1)) < count;) {
    try {
      run(i);
    } catch (const std::exception& e) {
      std::lock_guard<std::mutex> lock(slices.mutex);
      if (slices.error.empty()) slices.error = e.what();
    } catch (...) {  // Nothing may leave a pool task, nor the caller while tasks may run.
      std::lock_guard<std::mutex> lock(slices.mutex);
      if (slices.error.empty()) slices.error = "unknown exception";
    }
    if (slices.done.fetch_add(1) + 1 == count) {
      std::lock_guard<std::mutex> lock(slices.mutex);
      slices.all_done.notify_all();
    }
  }
}

// Splits the batch into `threads` slices, each run single-threaded on XLA's CPU thread pool
// (the one every XLA op runs on). A oneDNN call with its own OpenMP team would compete for the
// cores with XLA ops that the runtime runs concurrently (in a ResNet-152 step, a third of the
// calls' time overlapped matmuls), and OpenMP's static split stalls on a preempted thread.
// A batch smaller than `threads` runs whole on an OpenMP team of `threads`.
ffi::Error Run(ffi::ThreadPool pool, const Call& call, int64_t threads) {
  try {
    int64_t batch = call.x_dims[0];
    int64_t wanted = std::max<int64_t>(1, std::min(threads, batch));
    int64_t per_slice = (batch + wanted - 1) / wanted;
    int slices_count = static_cast<int>((batch + per_slice - 1) / per_slice);
    int omp_threads = wanted == 1 ? static_cast<int>(std::max<int64_t>(1, threads)) : 1;
    omp_set_num_threads(omp_threads);
    auto& engine = Engine();
    dnnl::stream stream(engine);
    // oneDNN's kernel layout: any slice's primitive gives it (all slices share the geometry).
    const Entry& first = Lookup(call.kind, WithBatch(call.x_dims, per_slice), call.w_dims,
                                WithBatch(call.y_dims, per_slice), call.geometry, omp_threads,
                                call.type);
    memory weights(Plain({call.w_dims[3], call.w_dims[2], call.w_dims[0], call.w_dims[1]},
                         memory::format_tag::hwio, call.weights_type()), engine, call.w);
    bool is_gradient = call.kind == Kind::kBackwardWeights;
    bool reordered = first.weights != weights.get_desc();
    std::vector<memory> packed;  // Forward/backward data: one, shared. Gradient: one per slice.
    for (int i = 0; i < (is_gradient ? slices_count : 1); ++i) {
      bool plain = !reordered && i == 0;
      packed.push_back(plain ? weights : memory(first.weights, engine));
    }
    if (!is_gradient && reordered) {
      dnnl::reorder(weights, packed[0]).execute(stream, weights, packed[0]);
      stream.wait();
    }
    auto run = [&](int i) {
      int64_t begin = i * per_slice, end = std::min(batch, begin + per_slice);
      RunSlice(call, begin, end, packed[is_gradient ? i : 0], omp_threads);
    };
    auto slices = std::make_shared<Slices>();
    for (int i = 1; i < slices_count; ++i) {
      pool.Schedule([slices, slices_count, &run] {
        // `run` is read only for a slice this task claims; the caller is then still waiting.
        Claim(*slices, slices_count, run);
      });
    }
    Claim(*slices, slices_count, run);
    {
      std::unique_lock<std::mutex> lock(slices->mutex);
      slices->all_done.wait(lock, [&] { return slices->done.load() == slices_count; });
      if (!slices->error.empty()) throw std::runtime_error(slices->error);
    }
    if (is_gradient) {
      // Sum the slices' gradients (same layout, padding included) into the first, then
      // reorder to HWIO if oneDNN's layout differs.
      size_t n = first.weights.get_size() / sizeof(float);
      float* total = static_cast<float*>(packed[0].get_data_handle());
      for (int i = 1; i < slices_count; ++i) {
        const float* part = static_cast<const float*>(packed[i].get_data_handle());
        for (size_t j = 0; j < n; ++j) total[j] += part[j];
      }
      if (reordered) {
        dnnl::reorder(packed[0], weights).execute(stream, packed[0], weights);
        stream.wait();
      }
    }
  } catch (const std::exception& e) {  // dnnl::error, std::bad_alloc: never across the C ABI.
    return ffi::Error(ffi::ErrorCode::kInternal, std::string("oneDNN convolution: ") + e.what());
  }
  return ffi::Error::Success();
}

std::vector<int64_t> Geometry(int64_t sh, int64_t sw, int64_t pt, int64_t pb, int64_t pl,
                              int64_t pr) {
  return {sh, sw, pt, pb, pl, pr};
}

// The activations' oneDNN data type, if every operand in `buffers` has it and it is F32 or BF16.
ffi::ErrorOr<memory::data_type> ActivationType(std::initializer_list<ffi::DataType> buffers) {
  ffi::DataType first = *buffers.begin();
  for (ffi::DataType t : buffers) {
    if (t != first) {
      return ffi::Unexpected(ffi::Error::InvalidArgument(
          "oneDNN convolution: operands of different data types"));
    }
  }
  if (first == ffi::DataType::F32) return memory::data_type::f32;
  if (first == ffi::DataType::BF16) return memory::data_type::bf16;
  return ffi::Unexpected(ffi::Error::InvalidArgument(
      "oneDNN convolution: operands must be float32 or bfloat16"));
}

ffi::Error Forward(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::AnyBuffer w,
                   ffi::Result<ffi::AnyBuffer> y, int64_t sh, int64_t sw, int64_t pt, int64_t pb,
                   int64_t pl, int64_t pr, int64_t threads) {
  auto type = ActivationType({x.element_type(), w.element_type(), y->element_type()});
  if (type.has_error()) return type.error();
  Call call{Kind::kForward, static_cast<char*>(x.untyped_data()), w.untyped_data(),
            static_cast<char*>(y->untyped_data()), Dims(x.dimensions()), Dims(w.dimensions()),
            Dims(y->dimensions()), Geometry(sh, sw, pt, pb, pl, pr), type.value()};
  return Run(pool, call, threads);
}

ffi::Error BackwardData(ffi::ThreadPool pool, ffi::AnyBuffer gy, ffi::AnyBuffer w,
                        ffi::Result<ffi::AnyBuffer> gx, int64_t sh, int64_t sw, int64_t pt,
                        int64_t pb, int64_t pl, int64_t pr, int64_t threads) {
  auto type = ActivationType({gy.element_type(), w.element_type(), gx->element_type()});
  if (type.has_error()) return type.error();
  Call call{Kind::kBackwardData, static_cast<char*>(gx->untyped_data()), w.untyped_data(),
            static_cast<char*>(gy.untyped_data()), Dims(gx->dimensions()), Dims(w.dimensions()),
            Dims(gy.dimensions()), Geometry(sh, sw, pt, pb, pl, pr), type.value()};
  return Run(pool, call, threads);
}

// `after` is not read: it is an operand only so that XLA orders this call after its producer.
ffi::Error BackwardWeights(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::AnyBuffer gy,
                           ffi::AnyBuffer after, ffi::ResultBuffer<ffi::F32> gw, int64_t sh,
                           int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr,
                           int64_t threads) {
  auto type = ActivationType({x.element_type(), gy.element_type()});
  if (type.has_error()) return type.error();
  Call call{Kind::kBackwardWeights, static_cast<char*>(x.untyped_data()), gw->typed_data(),
            static_cast<char*>(gy.untyped_data()), Dims(x.dimensions()), Dims(gw->dimensions()),
            Dims(gy.dimensions()), Geometry(sh, sw, pt, pb, pl, pr), type.value()};
  return Run(pool, call, threads);
}

}  // namespace

#define GEOMETRY_ATTRS                                                              \
  .Attr<int64_t>("sh").Attr<int64_t>("sw").Attr<int64_t>("pt").Attr<int64_t>("pb") \
      .Attr<int64_t>("pl").Attr<int64_t>("pr").Attr<int64_t>("threads")

XLA_FFI_DEFINE_HANDLER_SYMBOL(ResnetJaxOnednnConvForward, Forward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>() GEOMETRY_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(ResnetJaxOnednnConvBackwardData, BackwardData,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>() GEOMETRY_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(ResnetJaxOnednnConvBackwardWeights, BackwardWeights,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::Buffer<ffi::F32>>() GEOMETRY_ATTRS);
