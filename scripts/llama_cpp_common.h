// What scripts/llama_cpp_greedy.cpp and scripts/llama_cpp_time.cpp share: the prompt's
// tokens, and a batch-1 greedy context sized for them plus n_new tokens.
#pragma once
#include "llama.h"

#include <string>
#include <vector>

static std::vector<llama_token> prompt_tokens(const llama_vocab * vocab, const std::string & p) {
    const int n = -llama_tokenize(vocab, p.c_str(), p.size(), nullptr, 0, true, true);
    std::vector<llama_token> tokens(n);
    llama_tokenize(vocab, p.c_str(), p.size(), tokens.data(), n, true, true);
    return tokens;
}

static llama_context * greedy_context(llama_model * model, int n_prompt, int n_new, int threads) {
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = n_prompt + n_new + 8;
    cp.n_batch = n_prompt;
    cp.n_threads = cp.n_threads_batch = threads;
    cp.no_perf = false;
    return llama_init_from_model(model, cp);
}
