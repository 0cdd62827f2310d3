/*
 * regimen_plugin.h: the Regimen plugin C ABI, version 1.0.
 *
 * The C spelling of plugins/sdk/src/abi.rs (the Rust #[repr(C)] definitions are
 * normative; core/tests/plugin_c.rs compiles this header and compares every
 * sizeof/offsetof and every constant with them). plugins/sdk/ABI.md is the
 * reference: ownership, lifetimes, threading, errors, the payload wire format.
 *
 * C99; needs only <stdint.h> and <stddef.h>.
 *
 * Rules every type here follows:
 *  - a struct that may grow starts with `uint32_t size`, its size in bytes as
 *    the writer built it; fields are only ever appended, and a reader uses a
 *    field only when `size` covers it;
 *  - kinds, element types, statuses and policies are uint32_t codes; an unknown
 *    code is an error;
 *  - every pointer travels with its length; strings are UTF-8 and NOT
 *    NUL-terminated (RgStr);
 *  - memory is never freed across the boundary: output bytes go through a host
 *    RgSink, dense outputs into a host buffer of explicit length, and the
 *    tables the entry point returns stay alive and unchanged until exit;
 *  - every function pointer in a table must be non-null;
 *  - every call returns an RgStatus and may explain a failure through RgErrorOut.
 */
#ifndef REGIMEN_PLUGIN_H
#define REGIMEN_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- Versioning ---------------------------------------------------------- */

/* A host refuses a plugin of another major version. */
#define RG_ABI_MAJOR 1u
/* Additions only (appended fields, new codes). */
#define RG_ABI_MINOR 0u

/* The one symbol a plugin exports (see regimen_plugin_entry below). */
#define RG_ENTRY_SYMBOL "regimen_plugin_entry"

/* ---- Status codes (every call returns one) ------------------------------- */

typedef uint32_t RgStatus;

#define RG_STATUS_OK 0u        /* success */
#define RG_STATUS_ERROR 1u     /* failure; the message says why */
#define RG_STATUS_BAD_ARGS 2u  /* arguments refused; `argument` names the culprit */
#define RG_STATUS_PANIC 3u     /* the plugin caught a panic/crash of its own code */
#define RG_STATUS_BAD_INPUT 4u /* a payload or saved state did not decode */

/* ---- Export kinds and flags ---------------------------------------------- */

#define RG_KIND_COMPRESSOR 1u
#define RG_KIND_BATCH_CONTROLLER 2u

/* Instances may be called from several threads at once (each instance from one
 * thread at a time). Without it the host serializes every call into the
 * library through one lock. */
#define RG_FLAG_THREAD_SAFE 1u

/* ---- Argument kinds (RgArg.kind, RgParam.kind) --------------------------- */

#define RG_ARG_NUMBER 0u
#define RG_ARG_TEXT 1u
#define RG_ARG_BOOL 2u

/* ---- Compressor properties (RgCompressorInfo) ---------------------------- */

#define RG_AGGREGATION_GATHER 0u /* whole payloads all-gathered, each decoded */
#define RG_AGGREGATION_SUM 1u    /* data sections summed (allreduce) */

#define RG_ELEMENT_F32 0u  /* little-endian IEEE single */
#define RG_ELEMENT_F16 1u  /* little-endian IEEE half */
#define RG_ELEMENT_BF16 2u /* little-endian bfloat16 */

#define RG_FEEDBACK_OFF_BY_DEFAULT 0u
#define RG_FEEDBACK_ON_BY_DEFAULT 1u
#define RG_FEEDBACK_INTERNAL 2u /* the method accumulates itself */

#define RG_RESIDUAL_OWN_PAYLOAD 0u
#define RG_RESIDUAL_AGGREGATE 1u

/* Round codes written by next_round. */
#define RG_ROUND_DONE 0u
#define RG_ROUND_MORE 1u

/* ---- Payload wire format (plugins/sdk/src/wire.rs) ----------------------- */

/* Every payload starts with, all integers little-endian:
 *   offset 0  4 bytes  magic "RGMC"
 *   offset 4  1 byte   format version (RG_WIRE_VERSION)
 *   offset 5  1 byte   number of dimensions d (0..=RG_WIRE_MAX_DIMS)
 *   offset 6  2 bytes  method id (u16; plugins: >= RG_METHOD_FIRST_PLUGIN)
 *   offset 8  8 bytes  element count (u64, the product of the dimensions)
 *   offset 16 4*d      dimensions (u32 each)
 * then the method's data. */
#define RG_WIRE_MAGIC "RGMC"
#define RG_WIRE_VERSION 1u
#define RG_WIRE_MAX_DIMS 8u
#define RG_WIRE_FIXED_HEADER_BYTES 16u
#define RG_METHOD_FIRST_PLUGIN 0x8000u

/* ---- Basic types ---------------------------------------------------------- */

/* Borrowed UTF-8 bytes, not NUL-terminated. `ptr` may be NULL when len is 0. */
typedef struct RgStr {
    const uint8_t *ptr;
    size_t len;
} RgStr;

/* Borrowed bytes. */
typedef RgStr RgBytes;

/* Append `len` bytes at `data` to the host's buffer `ctx`; the host copies
 * them and returns RG_STATUS_OK, or an error status when it refuses (e.g. past
 * a size limit). */
typedef RgStatus (*RgSinkWriteFn)(void *ctx, const uint8_t *data, size_t len);

/* A host-owned growable byte buffer, valid for the duration of one call. */
typedef struct RgSink {
    void *ctx;           /* the host's buffer; opaque to the plugin */
    RgSinkWriteFn write; /* never NULL */
} RgSink;

/* Where a failing call reports why. */
typedef struct RgErrorOut {
    RgSink message;  /* the message, UTF-8 */
    RgSink argument; /* the argument at fault (RG_STATUS_BAD_ARGS); else empty */
} RgErrorOut;

/* One named argument from the script. */
typedef struct RgArg {
    RgStr name;
    uint32_t kind;    /* RG_ARG_NUMBER, RG_ARG_TEXT or RG_ARG_BOOL */
    uint32_t boolean; /* the value when kind is RG_ARG_BOOL: 0 or 1 */
    double number;    /* the value when kind is RG_ARG_NUMBER */
    RgStr text;       /* the value when kind is RG_ARG_TEXT */
} RgArg;

/* One parameter of an export's argument schema. Frozen for ABI 1.
 * (Rust names the third string `default`, a C keyword: here `default_value`.) */
typedef struct RgParam {
    RgStr name;
    uint32_t kind;       /* RG_ARG_NUMBER, RG_ARG_TEXT or RG_ARG_BOOL */
    uint32_t required;   /* 1 when the script must give it */
    RgStr default_value; /* the default as a script writes it; empty if required */
    RgStr doc;           /* one line of documentation */
} RgParam;

struct RgExport;

/* What the entry point returns. Lives until the process exits. */
typedef struct RgPluginInfo {
    uint32_t size;      /* sizeof(RgPluginInfo) as the plugin built it */
    uint32_t abi_major; /* RG_ABI_MAJOR */
    uint32_t abi_minor; /* RG_ABI_MINOR */
    uint32_t flags;     /* reserved, 0 */
    RgStr name;         /* the library's name */
    RgStr version;      /* the library's version string */
    size_t export_count;
    const struct RgExport *const *exports; /* export_count pointers */
} RgPluginInfo;

/* One named component the library exports. */
typedef struct RgExport {
    uint32_t size;     /* sizeof(RgExport) as the plugin built it */
    uint32_t kind;     /* RG_KIND_COMPRESSOR or RG_KIND_BATCH_CONTROLLER */
    uint32_t flags;    /* RG_FLAG_THREAD_SAFE or 0 */
    uint32_t reserved; /* 0 */
    RgStr name;        /* the script name: [A-Za-z_][A-Za-z0-9_]* */
    RgStr description; /* one line */
    size_t param_count;
    const RgParam *params; /* param_count entries */
    const void *data;      /* passed back unchanged to create */
    const void *vtable;    /* RgCompressorVTable or RgControllerVTable, by kind */
} RgExport;

/* ---- Compressors ---------------------------------------------------------- */

/* What a compressor instance declares when created. The HOST sets `size`; the
 * plugin writes only the fields `size` covers and leaves `size` unchanged. */
typedef struct RgCompressorInfo {
    uint32_t size;
    uint32_t method_id;   /* payload method id, >= RG_METHOD_FIRST_PLUGIN, < 0x10000 */
    uint32_t aggregation; /* RG_AGGREGATION_* */
    uint32_t element;     /* RG_ELEMENT_* (the summed type; RG_ELEMENT_F32 for gather) */
    uint32_t feedback;    /* RG_FEEDBACK_* */
    uint32_t residual;    /* RG_RESIDUAL_* */
} RgCompressorInfo;

/* One tensor handed to a compressor. */
typedef struct RgTensor {
    RgStr name;            /* the parameter's name */
    const uint64_t *shape; /* ndim dimensions */
    size_t ndim;
    const float *data; /* len elements, row-major */
    size_t len;        /* the product of the shape */
} RgTensor;

/* The current value of a scheduled argument. */
typedef struct RgScheduled {
    RgStr name;
    double value;
} RgScheduled;

/* Where and when a compressor is called. */
typedef struct RgStepContext {
    uint32_t size;     /* sizeof(RgStepContext) as the host built it */
    uint32_t reserved; /* 0 */
    uint64_t step;
    uint64_t rank;
    uint64_t world;
    uint64_t seed;
    uint64_t tensor; /* the tensor's index among the bound parameters */
    size_t scheduled_len;
    const RgScheduled *scheduled;
} RgStepContext;

typedef RgStatus (*RgCompressorCreateFn)(const void *data, const RgArg *args,
                                         size_t arg_count, void **inst,
                                         RgCompressorInfo *info,
                                         const RgErrorOut *err);
typedef void (*RgDestroyFn)(void *inst);
typedef RgStatus (*RgCompressFn)(void *inst, const RgTensor *input,
                                 const RgStepContext *ctx, const RgSink *out,
                                 const RgErrorOut *err);
typedef RgStatus (*RgNextRoundFn)(void *inst, const uint8_t *reduced,
                                  size_t reduced_len, const RgStepContext *ctx,
                                  const RgSink *out, uint32_t *round,
                                  const RgErrorOut *err);
typedef RgStatus (*RgDecompressAddFn)(void *inst, const uint8_t *payload,
                                      size_t payload_len, float scale,
                                      float *out, size_t out_len,
                                      const RgErrorOut *err);
typedef RgStatus (*RgSaveStateFn)(void *inst, const RgSink *out,
                                  const RgErrorOut *err);
typedef RgStatus (*RgLoadStateFn)(void *inst, const uint8_t *state,
                                  size_t state_len, const RgErrorOut *err);

/* A compressor export's functions (all non-NULL). */
typedef struct RgCompressorVTable {
    uint32_t size; /* sizeof(RgCompressorVTable) as the plugin built it */
    RgCompressorCreateFn create;
    RgDestroyFn destroy;
    RgCompressFn compress;
    RgNextRoundFn next_round;
    RgDecompressAddFn decompress_add;
    RgSaveStateFn save_state;
    RgLoadStateFn load_state;
} RgCompressorVTable;

/* ---- Batch controllers ---------------------------------------------------- */

/* Per-step observations; NaN means "not measured". */
typedef struct RgBatchMetrics {
    uint32_t size;     /* sizeof(RgBatchMetrics) as the host built it */
    uint32_t reserved; /* 0 */
    uint64_t step;
    uint64_t samples;           /* seen so far, this step's included */
    uint64_t samples_per_epoch; /* 0 when unknown */
    uint64_t batch;             /* the batch size of the step that just ran */
    double loss;
    double grad_norm;        /* |g| of the averaged gradient */
    double grad_sq_estimate; /* unbiased estimate of |G|^2 */
    double grad_variance;    /* estimate of tr(Sigma) per sample */
    double lr;
} RgBatchMetrics;

/* A controller's answer. */
typedef struct RgBatchDecision {
    uint32_t size;     /* sizeof(RgBatchDecision) as the host built it */
    uint32_t reserved; /* 0 */
    uint64_t batch;    /* the next step's batch size, >= 1 */
    double lr_scale;   /* factor on the scheduled lr (finite, > 0), or NaN */
} RgBatchDecision;

typedef RgStatus (*RgControllerCreateFn)(const void *data, const RgArg *args,
                                         size_t arg_count, void **inst,
                                         const RgErrorOut *err);
typedef RgStatus (*RgObserveFn)(void *inst, const RgBatchMetrics *metrics,
                                RgBatchDecision *decision,
                                const RgErrorOut *err);

/* A batch-controller export's functions (all non-NULL). */
typedef struct RgControllerVTable {
    uint32_t size; /* sizeof(RgControllerVTable) as the plugin built it */
    RgControllerCreateFn create;
    RgDestroyFn destroy;
    RgObserveFn observe;
    RgSaveStateFn save_state;
    RgLoadStateFn load_state;
} RgControllerVTable;

/* ---- The entry point ------------------------------------------------------ */

/* Mark the entry point exported from the shared library. */
#if defined(_WIN32)
#define RG_EXPORT __declspec(dllexport)
#elif defined(__GNUC__)
#define RG_EXPORT __attribute__((visibility("default")))
#else
#define RG_EXPORT
#endif

typedef const RgPluginInfo *(*RgEntryFn)(uint32_t host_abi_major);

/* The plugin defines this. It returns its tables (the same pointer on every
 * call), or NULL when it cannot serve `host_abi_major`; it must not unwind. */
RG_EXPORT const RgPluginInfo *regimen_plugin_entry(uint32_t host_abi_major);

#ifdef __cplusplus
}
#endif

#endif /* REGIMEN_PLUGIN_H */
