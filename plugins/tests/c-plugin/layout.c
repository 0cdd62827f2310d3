/*
 * Prints the layout of every struct of regimen_plugin.h and the value of every
 * constant, one "key value" line each; core/tests/plugin_c.rs compares the
 * output with std::mem::{size_of, align_of, offset_of!} of the Rust types of
 * plugins/sdk/src/abi.rs and with its constants.
 */
#include <stdio.h>

#include "regimen_plugin.h"

/* C99 has no alignof: the offset of a T after one char is T's alignment. */
#define ALIGN(T) offsetof(struct { char c; T t; }, t)
#define STRUCT(T)                                                            \
    printf(#T ".size %lu\n" #T ".align %lu\n", (unsigned long)sizeof(T),     \
           (unsigned long)ALIGN(T))
#define FIELD(T, f)                                                          \
    printf(#T "." #f ".offset %lu\n" #T "." #f ".size %lu\n",                \
           (unsigned long)offsetof(T, f), (unsigned long)sizeof(((T *)0)->f))
#define CONST(c) printf(#c " %lu\n", (unsigned long)(c))

int main(void)
{
    STRUCT(RgStr);
    FIELD(RgStr, ptr);
    FIELD(RgStr, len);

    STRUCT(RgSink);
    FIELD(RgSink, ctx);
    FIELD(RgSink, write);

    STRUCT(RgErrorOut);
    FIELD(RgErrorOut, message);
    FIELD(RgErrorOut, argument);

    STRUCT(RgArg);
    FIELD(RgArg, name);
    FIELD(RgArg, kind);
    FIELD(RgArg, boolean);
    FIELD(RgArg, number);
    FIELD(RgArg, text);

    STRUCT(RgParam);
    FIELD(RgParam, name);
    FIELD(RgParam, kind);
    FIELD(RgParam, required);
    FIELD(RgParam, default_value);
    FIELD(RgParam, doc);

    STRUCT(RgPluginInfo);
    FIELD(RgPluginInfo, size);
    FIELD(RgPluginInfo, abi_major);
    FIELD(RgPluginInfo, abi_minor);
    FIELD(RgPluginInfo, flags);
    FIELD(RgPluginInfo, name);
    FIELD(RgPluginInfo, version);
    FIELD(RgPluginInfo, export_count);
    FIELD(RgPluginInfo, exports);

    STRUCT(RgExport);
    FIELD(RgExport, size);
    FIELD(RgExport, kind);
    FIELD(RgExport, flags);
    FIELD(RgExport, reserved);
    FIELD(RgExport, name);
    FIELD(RgExport, description);
    FIELD(RgExport, param_count);
    FIELD(RgExport, params);
    FIELD(RgExport, data);
    FIELD(RgExport, vtable);

    STRUCT(RgCompressorInfo);
    FIELD(RgCompressorInfo, size);
    FIELD(RgCompressorInfo, method_id);
    FIELD(RgCompressorInfo, aggregation);
    FIELD(RgCompressorInfo, element);
    FIELD(RgCompressorInfo, feedback);
    FIELD(RgCompressorInfo, residual);

    STRUCT(RgTensor);
    FIELD(RgTensor, name);
    FIELD(RgTensor, shape);
    FIELD(RgTensor, ndim);
    FIELD(RgTensor, data);
    FIELD(RgTensor, len);

    STRUCT(RgScheduled);
    FIELD(RgScheduled, name);
    FIELD(RgScheduled, value);

    STRUCT(RgStepContext);
    FIELD(RgStepContext, size);
    FIELD(RgStepContext, reserved);
    FIELD(RgStepContext, step);
    FIELD(RgStepContext, rank);
    FIELD(RgStepContext, world);
    FIELD(RgStepContext, seed);
    FIELD(RgStepContext, tensor);
    FIELD(RgStepContext, scheduled_len);
    FIELD(RgStepContext, scheduled);

    STRUCT(RgCompressorVTable);
    FIELD(RgCompressorVTable, size);
    FIELD(RgCompressorVTable, create);
    FIELD(RgCompressorVTable, destroy);
    FIELD(RgCompressorVTable, compress);
    FIELD(RgCompressorVTable, next_round);
    FIELD(RgCompressorVTable, decompress_add);
    FIELD(RgCompressorVTable, save_state);
    FIELD(RgCompressorVTable, load_state);

    STRUCT(RgBatchMetrics);
    FIELD(RgBatchMetrics, size);
    FIELD(RgBatchMetrics, reserved);
    FIELD(RgBatchMetrics, step);
    FIELD(RgBatchMetrics, samples);
    FIELD(RgBatchMetrics, samples_per_epoch);
    FIELD(RgBatchMetrics, batch);
    FIELD(RgBatchMetrics, loss);
    FIELD(RgBatchMetrics, grad_norm);
    FIELD(RgBatchMetrics, grad_sq_estimate);
    FIELD(RgBatchMetrics, grad_variance);
    FIELD(RgBatchMetrics, lr);

    STRUCT(RgBatchDecision);
    FIELD(RgBatchDecision, size);
    FIELD(RgBatchDecision, reserved);
    FIELD(RgBatchDecision, batch);
    FIELD(RgBatchDecision, lr_scale);

    STRUCT(RgControllerVTable);
    FIELD(RgControllerVTable, size);
    FIELD(RgControllerVTable, create);
    FIELD(RgControllerVTable, destroy);
    FIELD(RgControllerVTable, observe);
    FIELD(RgControllerVTable, save_state);
    FIELD(RgControllerVTable, load_state);

    printf("RgStatus.size %lu\n", (unsigned long)sizeof(RgStatus));
    printf("RgEntryFn.size %lu\n", (unsigned long)sizeof(RgEntryFn));

    CONST(RG_ABI_MAJOR);
    CONST(RG_ABI_MINOR);
    printf("RG_ENTRY_SYMBOL %s\n", RG_ENTRY_SYMBOL);
    CONST(RG_STATUS_OK);
    CONST(RG_STATUS_ERROR);
    CONST(RG_STATUS_BAD_ARGS);
    CONST(RG_STATUS_PANIC);
    CONST(RG_STATUS_BAD_INPUT);
    CONST(RG_KIND_COMPRESSOR);
    CONST(RG_KIND_BATCH_CONTROLLER);
    CONST(RG_FLAG_THREAD_SAFE);
    CONST(RG_ARG_NUMBER);
    CONST(RG_ARG_TEXT);
    CONST(RG_ARG_BOOL);
    CONST(RG_AGGREGATION_GATHER);
    CONST(RG_AGGREGATION_SUM);
    CONST(RG_ELEMENT_F32);
    CONST(RG_ELEMENT_F16);
    CONST(RG_ELEMENT_BF16);
    CONST(RG_FEEDBACK_OFF_BY_DEFAULT);
    CONST(RG_FEEDBACK_ON_BY_DEFAULT);
    CONST(RG_FEEDBACK_INTERNAL);
    CONST(RG_RESIDUAL_OWN_PAYLOAD);
    CONST(RG_RESIDUAL_AGGREGATE);
    CONST(RG_ROUND_DONE);
    CONST(RG_ROUND_MORE);
    printf("RG_WIRE_MAGIC %s\n", RG_WIRE_MAGIC);
    CONST(RG_WIRE_VERSION);
    CONST(RG_WIRE_MAX_DIMS);
    CONST(RG_WIRE_FIXED_HEADER_BYTES);
    CONST(RG_METHOD_FIRST_PLUGIN);
    return 0;
}
