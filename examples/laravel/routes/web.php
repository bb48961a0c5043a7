<?php

use App\Http\Controllers\OperationsController;
use App\Http\Controllers\RunwireTokenController;
use Illuminate\Support\Facades\Auth;
use Illuminate\Support\Facades\Route;

Route::middleware('auth')->group(function () {
    Route::get('/operations/{run}', [OperationsController::class, 'run'])->whereNumber('run');
    Route::get('/tenants/{tenant}', [OperationsController::class, 'tenant'])->whereNumber('tenant');
    Route::post('/tenants/{tenant}/review-packs', [OperationsController::class, 'generatePack'])->whereNumber('tenant');

    // runwire.js's refreshToken hook. Not under /runwire/: that prefix is proxied to runwire.
    Route::post('/auth/runwire-token', RunwireTokenController::class)->name('runwire.token');
});

// Stand-in for the app's real login, so the example runs on its own. Never ship this.
if (app()->environment('local')) {
    Route::get('/dev/login/{user}', function (int $user) {
        Auth::loginUsingId($user);
        $next = (string) request('next', '/');

        return redirect(str_starts_with($next, '/') && ! str_starts_with($next, '//') ? $next : '/');
    })->whereNumber('user');
}

Route::get('/', fn () => response('Sign in first.', 200));
