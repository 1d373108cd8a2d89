/*
 * The floor: the least a VMM can do to run the benchmark guest on KVM.
 * It loads a Multiboot ELF32 image, enters it in 32-bit protected mode and
 * loops on KVM_RUN, completing every port and MMIO exit with no device
 * model at all, until the guest writes the debug-exit port (0xf4). A VMM's
 * exit path is measured against this loop.
 *
 * usage: floor KERNEL.elf [MEM_MIB]
 */
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static void die(const char *what) { perror(what); exit(70); }

int main(int argc, char **argv) {
	if (argc < 2) { fprintf(stderr, "usage: floor KERNEL.elf [MEM_MIB]\n"); return 64; }
	size_t mem_size = (size_t)(argc > 2 ? atoi(argv[2]) : 64) << 20;

	int kfd = open(argv[1], O_RDONLY);
	if (kfd < 0) die("open kernel");
	struct stat st;
	fstat(kfd, &st);
	uint8_t *img = mmap(NULL, st.st_size, PROT_READ, MAP_PRIVATE, kfd, 0);
	if (img == MAP_FAILED) die("mmap kernel");

	int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (kvm < 0) die("open /dev/kvm");
	int vm = ioctl(kvm, KVM_CREATE_VM, 0);
	if (vm < 0) die("KVM_CREATE_VM");
	if (ioctl(vm, KVM_SET_TSS_ADDR, 0xfffbd000) < 0) die("KVM_SET_TSS_ADDR");

	uint8_t *mem = mmap(NULL, mem_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (mem == MAP_FAILED) die("mmap guest memory");
	struct kvm_userspace_memory_region region = {
		.slot = 0, .guest_phys_addr = 0, .memory_size = mem_size, .userspace_addr = (uintptr_t)mem,
	};
	if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0) die("KVM_SET_USER_MEMORY_REGION");

	Elf32_Ehdr *eh = (Elf32_Ehdr *)img;
	if (st.st_size < (off_t)sizeof(*eh) || memcmp(eh->e_ident, ELFMAG, SELFMAG) || eh->e_ident[EI_CLASS] != ELFCLASS32) {
		fprintf(stderr, "floor: %s is not an ELF32 kernel\n", argv[1]);
		return 64;
	}
	for (int i = 0; i < eh->e_phnum; i++) {
		Elf32_Phdr *ph = (Elf32_Phdr *)(img + eh->e_phoff + i * eh->e_phentsize);
		if (ph->p_type != PT_LOAD) continue;
		if (ph->p_paddr + ph->p_memsz > mem_size) { fprintf(stderr, "floor: segment outside memory\n"); return 64; }
		memcpy(mem + ph->p_paddr, img + ph->p_offset, ph->p_filesz);
	}

	int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
	if (vcpu < 0) die("KVM_CREATE_VCPU");
	int run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
	struct kvm_run *run = mmap(NULL, run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
	if (run == MAP_FAILED) die("mmap kvm_run");

	struct kvm_sregs sregs;
	if (ioctl(vcpu, KVM_GET_SREGS, &sregs) < 0) die("KVM_GET_SREGS");
	struct kvm_segment code = { .base = 0, .limit = 0xffffffff, .selector = 0x08, .type = 0xb,
		.present = 1, .dpl = 0, .db = 1, .s = 1, .l = 0, .g = 1 };
	struct kvm_segment data = code;
	data.type = 0x3; data.selector = 0x10;
	sregs.cs = code;
	sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = data;
	sregs.cr0 = 0x11; /* PE | ET */
	if (ioctl(vcpu, KVM_SET_SREGS, &sregs) < 0) die("KVM_SET_SREGS");
	struct kvm_regs regs = { .rip = eh->e_entry, .rflags = 2, .rax = 0x2BADB002 };
	if (ioctl(vcpu, KVM_SET_REGS, &regs) < 0) die("KVM_SET_REGS");

	for (;;) {
		if (ioctl(vcpu, KVM_RUN, 0) < 0) {
			if (errno == EINTR || errno == EAGAIN) continue;
			die("KVM_RUN");
		}
		switch (run->exit_reason) {
		case KVM_EXIT_IO:
			if (run->io.port == 0xf4 && run->io.direction == KVM_EXIT_IO_OUT) {
				uint8_t v = *((uint8_t *)run + run->io.data_offset);
				return (v << 1) | 1;
			}
			break;
		case KVM_EXIT_MMIO:
			if (!run->mmio.is_write) memset(run->mmio.data, 0xff, run->mmio.len);
			break;
		case KVM_EXIT_HLT:
			return 0;
		default:
			fprintf(stderr, "floor: unexpected exit %u\n", run->exit_reason);
			return 2;
		}
	}
}
