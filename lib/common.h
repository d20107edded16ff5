/* common.h - included first by every .c file of the project.
 * Poisons the unbounded string functions (HAProxy's habit) and holds tiny
 * macros everyone needs. Nothing here allocates. */
#ifndef MAIL_COMMON_H
#define MAIL_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <stdio.h>

#define N_ELEMENTS(a) (sizeof(a) / sizeof((a)[0]))
#define MAIL_MIN(a, b) ((a) < (b) ? (a) : (b))
#define MAIL_MAX(a, b) ((a) > (b) ? (a) : (b))
#define ATTR_PRINTF(f, a) __attribute__((format(printf, f, a)))
#define ATTR_NORETURN __attribute__((noreturn))
#define ATTR_UNUSED __attribute__((unused))

#if !defined(MAIL_NO_POISON)
#pragma GCC poison strcpy strcat sprintf vsprintf gets
#endif

#endif
