package buildinfo

import "golang.org/x/sys/cpu"

func cpuFeatures() []string {
	return present(map[string]bool{
		"asimd": cpu.ARM64.HasASIMD, "fp": cpu.ARM64.HasFP, "asimdhp": cpu.ARM64.HasASIMDHP,
		"asimddp": cpu.ARM64.HasASIMDDP, "asimdfhm": cpu.ARM64.HasASIMDFHM, "sve": cpu.ARM64.HasSVE,
		"sve2": cpu.ARM64.HasSVE2, "i8mm": cpu.ARM64.HasI8MM,
	})
}
