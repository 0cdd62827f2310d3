/*
 * A Regimen compressor plugin written in plain C99 against
 * plugins/sdk/include/regimen_plugin.h: `c_identity`, dense little-endian f32
 * (no compression), summable (the data sections add up in the allreduce).
 *
 * Build: cc -shared -fPIC -O2 -std=c99 -Wall -Werror \
 *           -I plugins/sdk/include plugins/tests/c-plugin/identity.c \
 *           -o libregimen_c_identity.so
 * (core/tests/plugin_c.rs builds it that way and runs the SDK conformance suite
 * through the loader on it.)
 *
 * Payload (method id C_IDENTITY_METHOD): the common header (16 + 4*d bytes),
 * then the n elements as little-endian f32; exactly 16 + 4*d + 4*n bytes.
 *
 * Arguments: `error_feedback` (bool, default false; the host's switch, the
 * method itself ignores it). Anything else is refused with RG_STATUS_BAD_ARGS
 * naming the argument.
 *
 * Instances hold no state of the method, so the export is declared
 * thread-safe; save_state writes nothing and load_state accepts only nothing.
 */
#include <stdlib.h>
#include <string.h>

#include "regimen_plugin.h"

/* Test variants, built by core/tests/plugin_c.rs to check that the host refuses
 * them: a built-in's method id, and a function table with an empty slot. */
#ifdef RG_TEST_BUILTIN_ID
#define C_IDENTITY_METHOD 0x0004u
#else
#define C_IDENTITY_METHOD 0x8C01u
#endif

/* ---- Small helpers -------------------------------------------------------- */

/* An RgStr of a string literal (without its NUL). */
#define LIT(s) {(const uint8_t *)(s), sizeof(s) - 1}

static RgStatus sink_write(const RgSink *sink, const void *data, size_t len)
{
    if (sink == NULL || sink->write == NULL)
        return RG_STATUS_ERROR;
    return sink->write(sink->ctx, (const uint8_t *)data, len);
}

static void sink_text(const RgSink *sink, const char *text)
{
    (void)sink_write(sink, text, strlen(text));
}

/* Report `message` (and the argument at fault, if any) and return `status`. */
static RgStatus fail(const RgErrorOut *err, RgStatus status, const char *message,
                     const uint8_t *argument, size_t argument_len)
{
    if (err != NULL) {
        sink_text(&err->message, message);
        if (argument != NULL && argument_len > 0)
            (void)sink_write(&err->argument, argument, argument_len);
    }
    return status;
}

static int str_is(RgStr s, const char *text)
{
    size_t n = strlen(text);
    return s.len == n && (n == 0 || (s.ptr != NULL && memcmp(s.ptr, text, n) == 0));
}

static void put_u16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static void put_u32(uint8_t *p, uint32_t v)
{
    int i;
    for (i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void put_u64(uint8_t *p, uint64_t v)
{
    int i;
    for (i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t get_u32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
           ((uint32_t)p[3] << 24);
}

static uint64_t get_u64(const uint8_t *p)
{
    return (uint64_t)get_u32(p) | ((uint64_t)get_u32(p + 4) << 32);
}

static float f32_from_bits(uint32_t bits)
{
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static uint32_t f32_bits(float f)
{
    uint32_t bits;
    memcpy(&bits, &f, sizeof bits);
    return bits;
}

/* ---- The instance ----------------------------------------------------------- */

typedef struct Identity {
    int error_feedback; /* kept only to show an instance owning plugin memory */
} Identity;

static RgStatus identity_create(const void *data, const RgArg *args, size_t arg_count,
                                void **inst, RgCompressorInfo *info,
                                const RgErrorOut *err)
{
    Identity *me;
    size_t i;
    int error_feedback = 0;
    (void)data;
    if (inst == NULL || info == NULL)
        return fail(err, RG_STATUS_ERROR, "null instance slot or info pointer", NULL, 0);
    if (arg_count > 0 && args == NULL)
        return fail(err, RG_STATUS_ERROR, "null argument list", NULL, 0);
    for (i = 0; i < arg_count; i++) {
        const RgArg *arg = &args[i];
        if (str_is(arg->name, "error_feedback")) {
            if (arg->kind != RG_ARG_BOOL)
                return fail(err, RG_STATUS_BAD_ARGS, "expected true or false",
                            arg->name.ptr, arg->name.len);
            error_feedback = arg->boolean != 0;
        } else {
            return fail(err, RG_STATUS_BAD_ARGS,
                        "unknown argument; c_identity takes only `error_feedback`",
                        arg->name.ptr, arg->name.len);
        }
    }
    /* Write only the fields the host's struct covers; leave `size` alone. */
#define COVERS(field) \
    (info->size >= offsetof(RgCompressorInfo, field) + sizeof(info->field))
    if (!COVERS(residual))
        return fail(err, RG_STATUS_ERROR, "the host's compressor info is too small",
                    NULL, 0);
    me = (Identity *)malloc(sizeof *me);
    if (me == NULL)
        return fail(err, RG_STATUS_ERROR, "out of memory", NULL, 0);
    me->error_feedback = error_feedback;
    info->method_id = C_IDENTITY_METHOD;
    info->aggregation = RG_AGGREGATION_SUM;
    info->element = RG_ELEMENT_F32;
    info->feedback = RG_FEEDBACK_OFF_BY_DEFAULT;
    info->residual = RG_RESIDUAL_OWN_PAYLOAD;
#undef COVERS
    *inst = me;
    return RG_STATUS_OK;
}

static void identity_destroy(void *inst)
{
    free(inst); /* allocated by this library's malloc, freed by its free */
}

static RgStatus identity_compress(void *inst, const RgTensor *input,
                                  const RgStepContext *ctx, const RgSink *out,
                                  const RgErrorOut *err)
{
    uint8_t header[RG_WIRE_FIXED_HEADER_BYTES + 4 * RG_WIRE_MAX_DIMS];
    uint8_t chunk[4 * 256];
    size_t header_len, i, d;
    uint64_t numel = 1;
    RgStatus status;
    (void)ctx; /* nothing random: the step context is not needed */
    if (inst == NULL || input == NULL)
        return fail(err, RG_STATUS_ERROR, "null instance or input", NULL, 0);
    if (input->ndim > RG_WIRE_MAX_DIMS)
        return fail(err, RG_STATUS_ERROR, "more than 8 dimensions", NULL, 0);
    if (input->ndim > 0 && input->shape == NULL)
        return fail(err, RG_STATUS_ERROR, "null shape", NULL, 0);
    if (input->len > 0 && input->data == NULL)
        return fail(err, RG_STATUS_ERROR, "null tensor data", NULL, 0);
    memcpy(header, RG_WIRE_MAGIC, 4);
    header[4] = (uint8_t)RG_WIRE_VERSION;
    header[5] = (uint8_t)input->ndim;
    put_u16(header + 6, (uint16_t)C_IDENTITY_METHOD);
    for (d = 0; d < input->ndim; d++) {
        uint64_t dim = input->shape[d];
        if (dim > UINT32_MAX)
            return fail(err, RG_STATUS_ERROR, "a dimension exceeds u32", NULL, 0);
        if (dim != 0 && numel > UINT64_MAX / dim)
            return fail(err, RG_STATUS_ERROR, "element count overflows u64", NULL, 0);
        numel *= dim;
        put_u32(header + RG_WIRE_FIXED_HEADER_BYTES + 4 * d, (uint32_t)dim);
    }
    if (numel != (uint64_t)input->len)
        return fail(err, RG_STATUS_ERROR, "the shape's product differs from len", NULL, 0);
    put_u64(header + 8, numel);
    header_len = RG_WIRE_FIXED_HEADER_BYTES + 4 * input->ndim;
    status = sink_write(out, header, header_len);
    if (status != RG_STATUS_OK)
        return fail(err, status, "the host refused the header", NULL, 0);
    /* The data, little-endian, in chunks (the sink appends). */
    for (i = 0; i < input->len;) {
        size_t n = 0;
        while (n < 256 && i < input->len) {
            put_u32(chunk + 4 * n, f32_bits(input->data[i]));
            n++;
            i++;
        }
        status = sink_write(out, chunk, 4 * n);
        if (status != RG_STATUS_OK)
            return fail(err, status, "the host refused the data", NULL, 0);
    }
    return RG_STATUS_OK;
}

static RgStatus identity_next_round(void *inst, const uint8_t *reduced,
                                    size_t reduced_len, const RgStepContext *ctx,
                                    const RgSink *out, uint32_t *round,
                                    const RgErrorOut *err)
{
    (void)inst;
    (void)reduced;
    (void)reduced_len;
    (void)ctx;
    (void)out;
    if (round == NULL)
        return fail(err, RG_STATUS_ERROR, "null round pointer", NULL, 0);
    *round = RG_ROUND_DONE; /* one round: the reduced payload is final */
    return RG_STATUS_OK;
}

static RgStatus identity_decompress_add(void *inst, const uint8_t *payload,
                                        size_t payload_len, float scale, float *out,
                                        size_t out_len, const RgErrorOut *err)
{
    size_t ndim, header_len, i;
    uint64_t numel, product = 1;
    (void)inst;
    if (payload_len > 0 && payload == NULL)
        return fail(err, RG_STATUS_ERROR, "null payload", NULL, 0);
    if (out_len > 0 && out == NULL)
        return fail(err, RG_STATUS_ERROR, "null output buffer", NULL, 0);
    /* Every read is checked against payload_len: the payload is untrusted. */
    if (payload_len < RG_WIRE_FIXED_HEADER_BYTES)
        return fail(err, RG_STATUS_BAD_INPUT, "payload truncated in its header", NULL, 0);
    if (memcmp(payload, RG_WIRE_MAGIC, 4) != 0)
        return fail(err, RG_STATUS_BAD_INPUT, "not a Regimen payload (bad magic)", NULL, 0);
    if (payload[4] != RG_WIRE_VERSION)
        return fail(err, RG_STATUS_BAD_INPUT, "unknown payload format version", NULL, 0);
    ndim = payload[5];
    if (ndim > RG_WIRE_MAX_DIMS)
        return fail(err, RG_STATUS_BAD_INPUT, "more than 8 dimensions", NULL, 0);
    if (((uint32_t)payload[6] | ((uint32_t)payload[7] << 8)) != C_IDENTITY_METHOD)
        return fail(err, RG_STATUS_BAD_INPUT, "payload of another method", NULL, 0);
    numel = get_u64(payload + 8);
    header_len = RG_WIRE_FIXED_HEADER_BYTES + 4 * ndim;
    if (payload_len < header_len)
        return fail(err, RG_STATUS_BAD_INPUT, "payload truncated in its shape", NULL, 0);
    for (i = 0; i < ndim; i++) {
        uint64_t dim = get_u32(payload + RG_WIRE_FIXED_HEADER_BYTES + 4 * i);
        product = (dim != 0 && product > UINT64_MAX / dim) ? UINT64_MAX : product * dim;
    }
    if (product != numel)
        return fail(err, RG_STATUS_BAD_INPUT, "element count differs from the shape",
                    NULL, 0);
    if (numel != (uint64_t)out_len)
        return fail(err, RG_STATUS_BAD_INPUT,
                    "payload element count differs from the output length", NULL, 0);
    if ((payload_len - header_len) / 4 != out_len || (payload_len - header_len) % 4 != 0)
        return fail(err, RG_STATUS_BAD_INPUT,
                    "data section is not exactly 4 bytes per element", NULL, 0);
    for (i = 0; i < out_len; i++)
        out[i] += scale * f32_from_bits(get_u32(payload + header_len + 4 * i));
    return RG_STATUS_OK;
}

static RgStatus identity_save_state(void *inst, const RgSink *out, const RgErrorOut *err)
{
    (void)inst;
    (void)out;
    (void)err;
    return RG_STATUS_OK; /* stateless: nothing to write */
}

static RgStatus identity_load_state(void *inst, const uint8_t *state, size_t state_len,
                                    const RgErrorOut *err)
{
    (void)inst;
    (void)state;
    if (state_len != 0)
        return fail(err, RG_STATUS_BAD_INPUT,
                    "c_identity keeps no state, but state bytes were given", NULL, 0);
    return RG_STATUS_OK;
}

/* ---- The tables (static: alive and unchanged until the process exits) ---- */

static const RgCompressorVTable IDENTITY_VTABLE = {
    sizeof(RgCompressorVTable), identity_create,     identity_destroy,
#ifdef RG_TEST_NULL_SLOT
    identity_compress,          NULL,                identity_decompress_add,
#else
    identity_compress,          identity_next_round, identity_decompress_add,
#endif
    identity_save_state,        identity_load_state,
};

static const RgParam IDENTITY_PARAMS[] = {
    {LIT("error_feedback"), RG_ARG_BOOL, 0, LIT("false"),
     LIT("keep an error-feedback residual (the host's switch)")},
};

static const RgExport IDENTITY_EXPORT = {
    sizeof(RgExport),
    RG_KIND_COMPRESSOR,
    RG_FLAG_THREAD_SAFE,
    0,
    LIT("c_identity"),
    LIT("dense f32, no compression (a plugin written in C)"),
    sizeof IDENTITY_PARAMS / sizeof IDENTITY_PARAMS[0],
    IDENTITY_PARAMS,
    NULL,
    &IDENTITY_VTABLE,
};

static const RgExport *const EXPORTS[] = {&IDENTITY_EXPORT};

static const RgPluginInfo INFO = {
    sizeof(RgPluginInfo),
    RG_ABI_MAJOR,
    RG_ABI_MINOR,
    0,
    LIT("regimen-c-identity"),
    LIT("0.1.0"),
    sizeof EXPORTS / sizeof EXPORTS[0],
    EXPORTS,
};

RG_EXPORT const RgPluginInfo *regimen_plugin_entry(uint32_t host_abi_major)
{
    /* This library speaks ABI 1 only; a host of another major gets NULL. */
    if (host_abi_major != RG_ABI_MAJOR)
        return NULL;
    return &INFO;
}
