/* fdt_host.c: runs the probe's device-tree reader (fdt.c, with the string
 * functions of ../lib/string.c) on the build host, for guests_test.go: it reads a
 * DTB from stdin into a buffer of exactly its length and prints what
 * fdt_parse found as key=value lines. Built with the host's gcc and
 * AddressSanitizer, so a read outside the input fails the run. The
 * probe's libc-named helpers are renamed (-D) so they do not clash with
 * the host's libc. With -loop it reads inputs as a 4-byte little-endian
 * length and the bytes, each into its own exact-size buffer, and answers
 * each with one "ok=N" line: the fuzz target's fast path. */
#define PROBE_HOST
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "probe.h"

static int loop(void)
{
	static struct fdt_info fi;
	unsigned char hdr[4];
	while (fread(hdr, 1, 4, stdin) == 4) {
		size_t n = hdr[0] | hdr[1] << 8 | hdr[2] << 16 | (size_t)hdr[3] << 24;
		unsigned char *blob = malloc(n ? n : 1);
		if (!blob || fread(blob, 1, n, stdin) != n)
			return 1;
		int ok = fdt_parse(blob, (uint32_t)n, &fi);
		free(blob);
		fprintf(stdout, "ok=%d\n", ok);
		fflush(stdout);
	}
	return 0;
}

int main(int argc, char **argv)
{
	if (argc > 1 && strcmp(argv[1], "-loop") == 0)
		return loop();
	size_t cap = 1 << 16, n = 0;
	unsigned char *buf = malloc(cap);
	for (;;) {
		if (n == cap)
			buf = realloc(buf, cap *= 2);
		size_t r = fread(buf + n, 1, cap - n, stdin);
		if (r == 0)
			break;
		n += r;
	}
	/* Exactly n bytes, so that ASan sees any read past the input. */
	unsigned char *blob = malloc(n ? n : 1);
	memcpy(blob, buf, n);
	free(buf);
	static struct fdt_info fi;
	int ok = fdt_parse(blob, (uint32_t)(n > 0xffffffffu ? 0xffffffffu : n), &fi);
	fprintf(stdout, "ok=%d\n", ok);
	if (!ok) {
		fprintf(stdout, "err=%s\n", fi.err ? fi.err : "");
		free(blob);
		return 0;
	}
	fprintf(stdout, "model=%s\nbootargs=%s\nstdout=%s\n", fi.model, fi.bootargs ? fi.bootargs : "", fi.stdout_path);
	for (int i = 0; i < fi.nmem; i++)
		fprintf(stdout, "mem=%#llx+%#llx\n", (unsigned long long)fi.mem_base[i], (unsigned long long)fi.mem_size[i]);
	for (int i = 0; i < fi.ncpus; i++)
		fprintf(stdout, "cpu=%#llx %s\n", (unsigned long long)fi.cpu_reg[i], fi.cpu_enable[i]);
	fprintf(stdout, "psci=%d %s %s\n", fi.psci_found, fi.psci_compat, fi.psci_method);
	fprintf(stdout, "gic=%s d=%#llx+%#llx r=%#llx+%#llx regions=%u its=%d\n", fi.gic_compat, (unsigned long long)fi.gicd_base,
		(unsigned long long)fi.gicd_size, (unsigned long long)fi.gicr_base, (unsigned long long)fi.gicr_size, fi.gicr_regions,
		fi.gic_its);
	fprintf(stdout, "timer=%d %u,%u,%u,%u freq=%u\n", fi.timer_found, fi.timer_ppi[0], fi.timer_ppi[1], fi.timer_ppi[2],
		fi.timer_ppi[3], fi.timer_clock_frequency);
	fprintf(stdout, "uart=%d %#llx %s spi=%d\n", fi.uart_found, (unsigned long long)fi.uart_base, fi.uart_path, (int)fi.uart_spi);
	char v[64];
	if (fdt_bootarg(fi.bootargs, "probe.mode", v, sizeof(v)))
		fprintf(stdout, "probe.mode=%s\n", v);
	free(blob); /* fi.bootargs points into it: printed above */
	return 0;
}
