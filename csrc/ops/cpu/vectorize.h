// CTNODE_CPU_CLONES: compile a hot CPU loop twice (x86-64-v3: AVX2 + FMA, and baseline), picked at load time.
#pragma once

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12
#define CTNODE_CPU_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define CTNODE_CPU_CLONES
#endif
