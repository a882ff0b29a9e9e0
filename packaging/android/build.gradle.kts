// The AAR: the UniFFI Kotlin bindings and the native libraries that build-aar.sh prepared under
// target/dist-build/android. Not run on the project's machines (no Android SDK there).
plugins {
    id("com.android.library") version "8.7.3"
    id("org.jetbrains.kotlin.android") version "2.1.0"
}

val samizdatVersion: String by project
val samizdatKotlin: String by project
val samizdatJniLibs: String by project

version = samizdatVersion

android {
    namespace = "org.samizdat"
    compileSdk = 35
    defaultConfig {
        minSdk = 24
        consumerProguardFiles("consumer-rules.pro")
    }
    sourceSets["main"].apply {
        java.srcDir(samizdatKotlin)
        jniLibs.srcDir(samizdatJniLibs)
    }
    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_11
        targetCompatibility = JavaVersion.VERSION_11
    }
    packaging {
        // The libraries are stripped by build-aar.sh already.
        jniLibs.keepDebugSymbols += "**/libsamizdat_ffi.so"
    }
}

kotlin {
    compilerOptions {
        jvmTarget.set(org.jetbrains.kotlin.gradle.dsl.JvmTarget.JVM_11)
    }
}

dependencies {
    // JNA's AAR carries libjnidispatch.so for every Android ABI.
    implementation("net.java.dev.jna:jna:5.19.1@aar")
}
