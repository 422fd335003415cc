// Time llama.cpp's batch-1 greedy decode with the C API only (no llama-common needed).
//   llama_cpp_time MODEL.gguf N_NEW N_THREADS REPEATS "PROMPT"
// For each repeat: fresh KV cache, prompt decoded as one batch (timed), then N_NEW
// single-token decodes (timed; EOG does NOT stop the loop, so every repeat decodes exactly
// N_NEW tokens). Prints the per-repeat ms/token and tok/s, the best and the median, and
// llama.cpp's own llama_perf_context numbers of the last repeat. Derived from
// scripts/llama_cpp_greedy.cpp.
// Weights are NOT repacked into "extra" buffer types (AMX / CPU_REPACK) unless the env var
// LLAMA_EXTRA_BUFTS=1: on this Sapphire-Rapids-class CPU (amx_int8) the AMX path
// segfaults in ggml_backend_amx_mul_mat on any batch > 1 (the prompt), as
// llama_cpp_greedy does (known: ggml-org/llama.cpp#20824). With LLAMA_PROMPT_ONE_BY_ONE=1
// the prompt is decoded as single-token batches, so the AMX path can be timed too.
#include "llama_cpp_common.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

static double now_ms() {
    return std::chrono::duration<double, std::milli>(
        std::chrono::steady_clock::now().time_since_epoch()).count();
}

int main(int argc, char ** argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: %s MODEL.gguf N_NEW N_THREADS REPEATS PROMPT\n", argv[0]);
        return 2;
    }
    const int n_new = atoi(argv[2]);
    const int n_threads = atoi(argv[3]);
    const int repeats = atoi(argv[4]);
    const std::string prompt = argv[5];
    llama_log_set([](ggml_log_level, const char *, void *) {}, nullptr);
    llama_backend_init();
    llama_model_params mp = llama_model_default_params();
    const char * extra = getenv("LLAMA_EXTRA_BUFTS");
    mp.use_extra_bufts = extra != nullptr && extra[0] == '1';
    const char * one = getenv("LLAMA_PROMPT_ONE_BY_ONE");   // =1: prompt token by token
    const bool one_by_one = one != nullptr && one[0] == '1';
    llama_model * model = llama_model_load_from_file(argv[1], mp);
    if (model == nullptr) { fprintf(stderr, "error: cannot load %s\n", argv[1]); return 1; }
    const llama_vocab * vocab = llama_model_get_vocab(model);
    std::vector<llama_token> tokens = prompt_tokens(vocab, prompt);
    const int n = tokens.size();
    llama_context * ctx = greedy_context(model, n, n_new, n_threads);
    llama_sampler * greedy = llama_sampler_chain_init(llama_sampler_chain_default_params());
    llama_sampler_chain_add(greedy, llama_sampler_init_greedy());
    printf("prompt tokens %d, new tokens %d, threads %d, use_extra_bufts %d\n", n, n_new,
           n_threads, (int) mp.use_extra_bufts);

    std::vector<double> per_tok;
    std::vector<llama_token> out;
    for (int r = 0; r < repeats; r++) {
        llama_memory_clear(llama_get_memory(ctx), true);
        llama_perf_context_reset(ctx);
        out.clear();
        double t0 = now_ms();
        llama_batch batch;
        if (one_by_one) {   // prompt as n batches of 1 (the AMX path crashes on batch > 1)
            for (int i = 0; i < n; i++) {
                batch = llama_batch_get_one(&tokens[i], 1);
                if (llama_decode(ctx, batch) != 0) { fprintf(stderr, "decode failed\n"); return 1; }
            }
        } else {
            batch = llama_batch_get_one(tokens.data(), tokens.size());
            if (llama_decode(ctx, batch) != 0) { fprintf(stderr, "decode failed\n"); return 1; }
        }
        llama_token next = llama_sampler_sample(greedy, ctx, -1);
        out.push_back(next);
        double t1 = now_ms();
        for (int i = 0; i < n_new; i++) {   // n_new single-token decodes (+ greedy sample)
            batch = llama_batch_get_one(&next, 1);
            if (llama_decode(ctx, batch) != 0) { fprintf(stderr, "decode failed\n"); return 1; }
            next = llama_sampler_sample(greedy, ctx, -1);
            out.push_back(next);
        }
        double t2 = now_ms();
        const double ms = (t2 - t1) / n_new;
        per_tok.push_back(ms);
        printf("repeat %d: prompt %.1f ms, decode %.3f ms/token = %.1f tok/s\n",
               r, t1 - t0, ms, 1000.0 / ms);
    }
    std::vector<double> s = per_tok;
    std::sort(s.begin(), s.end());
    printf("best %.3f ms/token = %.1f tok/s; median %.3f ms/token = %.1f tok/s\n",
           s[0], 1000.0 / s[0], s[s.size() / 2], 1000.0 / s[s.size() / 2]);
    printf("first new ids:");
    for (size_t i = 0; i < std::min<size_t>(out.size(), 24); i++) printf(" %d", out[i]);
    printf("\n");
    fflush(stdout);
    const llama_perf_context_data pd = llama_perf_context(ctx);   // llama.cpp's own timers
    printf("llama_perf (last repeat): prompt eval %.1f ms / %d tokens, eval %.1f ms / %d runs"
           " = %.3f ms/token = %.1f tok/s\n", pd.t_p_eval_ms, pd.n_p_eval, pd.t_eval_ms,
           pd.n_eval, pd.t_eval_ms / std::max(1, pd.n_eval),
           1000.0 * pd.n_eval / std::max(1e-9, pd.t_eval_ms));
    llama_sampler_free(greedy);
    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return 0;
}
